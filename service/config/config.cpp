#include "config/config.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

namespace xanesd {

std::int64_t max_message_bytes(const IngestConfig& cfg) {
  constexpr double MiB = 1048576.0;
  const double bytes = cfg.max_message_MiB > 0 ? cfg.max_message_MiB * MiB : std::min(cfg.max_scan_GiB * 1024.0 * MiB / 8, 512 * MiB);
  return static_cast<std::int64_t>(std::max(bytes, 2 * MiB));  // a header (at most 1 MiB) always fits
}

double ingest_buffer_bytes(const Config& cfg, double frame_bytes) {
  const double zmq = (cfg.ingest.rcvhwm + 1) * frame_bytes;
  const double queue = std::min(cfg.ingest.queue_frames * frame_bytes, std::max(cfg.ingest.queue_MiB * 1048576.0, frame_bytes));
  const double journal = cfg.journal.enabled ? std::max(static_cast<double>(cfg.journal.queue_bytes), frame_bytes) : 0.0;
  return zmq + queue + journal;
}

const std::vector<ConfigKey>& config_keys() {
  static const std::vector<ConfigKey> keys = {
      {"ingest.endpoint", "tcp://127.0.0.1:5555", "ZeroMQ endpoint the PULL socket binds for start/frame/stop messages"},
      {"ingest.queue_frames", 4096, "capacity (messages) of the queue between the receiver and the pipeline; when full (this, or ingest.queue_MiB) the receiver waits and the sender's ZeroMQ queue fills (lossless back-pressure)", 1, 1000000},
      {"ingest.queue_MiB", 256.0, "capacity (MiB of arrays) of the queue between the receiver and the pipeline: the bound that holds for large frames (a 2048² float32 frame is 16 MiB); a single larger message still goes into an empty queue", 1, 1e6},
      {"ingest.rcvhwm", 16, "ZeroMQ receive high-water mark (messages) of the ingest socket: what ZeroMQ holds before the queue (up to this many frames of any size; the queue, not this, absorbs bursts of small messages)", 1, 100000},
      {"ingest.energy_tolerance_eV", 1.0, "largest allowed |frame.energy_eV − planned energy| (eV); frames beyond it are rejected", 0, 1e4},
      {"ingest.min_transmission", 1e-6, "transmission I/F below this (including ≤ 0) is clamped to it before −ln and counted", 1e-300, 1},
      {"ingest.max_scan_GiB", 16.0, "largest scan a start (or an extend) may ask for, as status states it (scan.memory.bytes, README \"Memory\"): the spectral store (rows·cols·energies·4 bytes, 8 with Poisson count scales) and XRF channels, the fit's statistics and maps, and the map products, with every loaded reference; bigger scans are refused with the figure before anything is allocated. The ingest buffers around a scan (scan.memory.ingest_buffers) are not counted", 0.001, 1e6},
      {"ingest.beside_finish_MiB", 512.0, "a new scan's start is taken while the last scan's final maps and result file are still being made (README \"How it fits together\") when the two scans hold at most this many MiB together (status scan.memory.bytes) and fit in ingest.max_scan_GiB; larger scans wait for that finish, as every other message does: on 2 cores a big scan's finish keeps both busy, and the new scan's fresh pages and cycles beside it made 1024² and 2048² scans slower end to end (bench_ingest). 0: never beside", 0, 1e6},
      {"ingest.max_message_MiB", 0.0, "largest message part (one array frame) the ingest socket accepts, MiB (ZMQ_MAXMSGSIZE: a larger part drops the sender's connection before it is received whole); 0: derived, an eighth of ingest.max_scan_GiB and at most 512 MiB (a float64 plane of the largest image, 2^26 pixels)", 0, 1e6},
      {"publish.endpoint", "tcp://127.0.0.1:5556", "ZeroMQ endpoint the PUB socket binds for live products"},
      {"publish.interval_ms", 250, "minimum time (ms) between map publications while a scan runs. A cycle (solve + publish) is also never started sooner after the previous one than that one took, so solving uses at most about half of the pipeline's time and ingest keeps up; 0 publishes as often as that allows", 0, 3.6e6, true},
      {"publish.sndhwm", 20, "ZeroMQ send high-water mark per subscriber, in whole messages (libzmq counts a multipart message once): how many publications a slow subscriber may have queued before it misses some and sees a gap in `version`; nothing upstream ever waits. A cycle is 5–13 messages, so 20 holds about 2 cycles of maps (at 2048² with 3 references ≈ 160 MB a cycle)", 1, 100000},
      {"control.endpoint", "tcp://127.0.0.1:5557", "ZeroMQ endpoint the control socket (ROUTER; clients use REQ) binds"},
      {"control.reply_timeout_ms", 60000, "longest a control request waits for the pipeline before it is answered with an error (ms; code command_timed_out): a command that has not started by then is cancelled (it never runs), one that is running goes on and its outcome is published on the errors topic (late_reply) when it ends. status and snapshot never wait for the pipeline", 100, 3.6e6},
      {"references.files", nlohmann::json::array(), "reference spectra files (XDI, Athena/Demeter multi-column exports, beamline scans with i0/itrans/ifluor columns, CSV with a header row, Athena .prj projects, two-column eV/keV text; plain or gzipped), relative to the config file's folder"},
      {"references.normalize", "auto", "edge-normalize references as Larch's pre_edge does: 'auto' (only spectra that are not already ~0 before the edge and ~1 at the end: raw μ; where an edge step means nothing, as at L2,3 edges in optical density, as 'background'), 'always', 'never', or 'background' (subtract the pre-edge line, keep the spectrum's own scale)"},
      {"references.libraries", nlohmann::json::object(), "named reference sets a start may name in its references (e.g. \"references\": \"fe-l\"): {\"fe-k\": \"refs/fe-k\", \"fe-l\": [\"a.xdi\", \"b.csv\"]}, each a folder (every file in it) or reference files, relative to the config file's folder; read when a start names them (normalized with references.normalize)"},
      {"references.energy_unit", "auto", "energy unit of reference files: 'auto' (declared in the header, else keV when every energy is below 100), 'eV' or 'keV'"},
      {"references.margin_eV", 20.0, "how far (eV) the scan may extend beyond a reference's energy range; there the reference's end value is held. Beyond it the references are refused for that scan", 0, 1e4},
      {"references.select", true, "choose the references the sample needs from the whole image (tile means of material pixels, stepwise selection on the pooled misfit: docs/science.md) and fit pixels with those only; revised live, reported on the `references` topic, in status and in the result file. Off: every loaded reference is fitted in every pixel", -1e300, 1e300, true},
      {"references.select_penalty", 1.0, "reference selection: penalty per tile that uses a reference, × ln(energies) (1: BIC); larger selects fewer", 0, 1e6, true},
      {"references.select_min_share", 0.02, "reference selection: a reference must explain at least this share of the pooled misfit without it (guards against references that only patch model mismatch)", 0, 1, true},
      {"references.select_hysteresis", 2.0, "reference selection, live: a selected reference stays until its evidence falls below penalty / h; an unselected one needs h × penalty (no flicker)", 1, 100, true},
      {"references.select_max_tiles", 1024, "reference selection: the image is cut into at most this many tiles (at least 6×6 pixels each) whose mean spectra are the evidence", 4, 65536, true},
      {"references.select_stability", 8, "reference selection: random halves of the tiles the selection is repeated on for each reference's stability score (0: none)", 0, 1000, true},
      {"references.collinear_cos", 0.995, "reference selection: pairs of references more alike than this on the scan's energies (background removed) are reported as indistinguishable", 0, 1, true},
      {"fit.method", "nnls", "'nnls' (species coefficients ≥ 0, background free), 'least_squares', or 'lasso' (positive LASSO for large libraries: selects a few references)", -1e300, 1e300, true},
      {"fit.background", true, "fit a + b·(E−E0) jointly with the references (science.md §3)"},
      {"fit.sum_to_one", false, "constrain Σc = 1: only for edge-normalized spectra (thickness is then fixed at 1)", -1e300, 1e300, true},
      {"fit.lasso_alpha", 5e-4, "positive-LASSO penalty per energy point on normalized spectra (scikit-learn's α; scaled by each pixel's thickness)", 0, 10, true},
      {"fit.weighting", "auto", "'auto': with fit.spatial off, Poisson-weighted final maps (stop, batch, a refit finished scan) for scans up to fit.poisson_max_pixels, live maps unweighted (cheap previews); with fit.spatial on (the default) unweighted, since the spatial estimate averages unweighted statistics (it is 3–4× below the weighted per-pixel fit's error on the accuracy scenes); 'poisson': weighted always, live too; 'none': unweighted. Poisson weighting (variance ŷ/I0 in fluorescence, (e^ŷ+1)/flat in transmission, in any unit of I0: the scale cancels) is the maximum-likelihood fit for counts: ~10 % lower fraction error on the accuracy scenes; it solves each pixel from its raw samples (a 512² × 73 `xanesd fit`: 13.5 s against 4.8 s unweighted) and keeps an extra E×P float plane"},
      {"fit.poisson_max_pixels", 1048576, "fit.weighting=auto: largest scan (pixels) whose final maps are Poisson-weighted; larger scans are fitted unweighted (the weighted solve reads every sample per pixel and doubles the store)", 0, 1e12},
      {"fit.threads", 0, "threads that solve pixels at each publication (0: one per core)", 0, 256},
      {"fit.lasso_refit", true, "after LASSO selects references, re-estimate them by NNLS (removes the shrinkage bias)", -1e300, 1e300, true},
      {"fit.spatial", true, "edge-preserving spatial estimation of the fractions (science.md §7): each pixel's statistics are averaged with those of neighbours whose thickness-normalized spectra agree with its own within the measured noise (χ² distance), then solved with the same solver; fraction_sigma propagates the weights (plus the smoothing bias it measures); thickness, residual and R-factor are the pixel's own data against the averaged model (its thickness is its own: neighbours are rescaled to it). The effective number of pixels averaged is saved (spatial_neighbours)", -1e300, 1e300, true},
      {"fit.spatial_live_max_pixels", 1048576, "fit.spatial: scans up to this many pixels get the spatial step in every live cycle; larger scans only in their final maps (bench_spatial, 2 cores, a live cycle's solve and map messages for a 25-energy scene: 0.070 s with the step against 0.047 s without at 1024², 0.27–0.41 s against 0.19–0.29 s at 2048²; bench_ingest, 2048² paced at half its capacity: the step in live cycles made them 34–41 % longer and the map latency p50 1.36–1.60 s against 1.14–1.28 s)", 0, 1e12, true},
      {"fit.spatial_radius", 2, "spatial estimation: the window is (2r+1)² pixels", 1, 10, true},
      {"fit.spatial_strength", 3.0, "spatial estimation: kernel width; a neighbour's weight falls to 0 when its χ² distance exceeds the noise expectation (K−1 degrees of freedom) by strength² × that expectation. Larger smooths more", 0.05, 20, true},
      {"fit.spatial_min_snr", 3.0, "spatial estimation: pixels whose thickness is below this many standard errors (no material) are neither smoothed nor lent to neighbours", 0, 1e6, true},
      {"edge.e0_eV", 0.0, "edge energy for the per-pixel edge maps' normalization ranges (eV); 0: from the image's mean spectrum (maximum of dμ/dE)", 0, 1e6, true},
      {"edge.pre1_eV", 0.0, "pre-edge range start relative to E0 (eV, negative); 0: Larch's rule (second energy − E0, rounded)", -1e4, 0, true},
      {"edge.pre2_eV", 0.0, "pre-edge range end relative to E0 (eV, negative); 0: Larch's rule (≈ pre1/3)", -1e4, 0, true},
      {"edge.norm1_eV", 0.0, "post-edge range start relative to E0 (eV); 0: Larch's rule (min(150, norm2/3))", 0, 1e4, true},
      {"edge.norm2_eV", 0.0, "post-edge range end relative to E0 (eV); 0: Larch's rule (last energy − E0)", 0, 1e4, true},
      {"edge.nnorm", -1, "post-edge polynomial degree 0–2; −1: Larch's rule (by the range's width)", -1, 2, true},
      {"mask.thickness_min", 0.0, "mask pixels whose thickness (edge step, signal units) is below this; 0: off", 0, 1e30, true},
      {"mask.thickness_min_relative", 0.05, "mask pixels thinner than this fraction of the 99th-percentile thickness (no material); 0: off", 0, 1, true},
      {"mask.residual_max", 0.0, "mask pixels whose RMS residual exceeds this (signal units); 0: off", 0, 1e30, true},
      {"mask.rfactor_max", 0.0, "mask pixels whose R-factor χ²/Σy² exceeds this; 0: off", 0, 1e30, true},
      {"segment.enabled", true, "segment the image live (science.md §4): PCA features + k-means, cluster-then-fit; published on maps/segments and clusters", -1e300, 1e300, true},
      {"segment.interval_ms", 1000, "while a scan runs, refresh the reference selection and the segmentation at most this often (ms; on their own thread beside the fit's cycles, after the scan's first cycle); always with the final maps. maps/segments, clusters and references go out with the cycle after each refresh", 0, 3.6e6, true},
      {"segment.k", 0, "number of clusters (domains with material); 0: the smallest k whose within-cluster scatter of the measured features (spectral, XRF) is at most segment.noise_ratio × their noise (k = 1 when the image's own scatter is), re-judged at each update; the previous clusters are kept while they pass and one fewer would not", 0, 254, true},
      {"segment.k_max", 6, "largest k the automatic choice considers", 2, 254, true},
      {"segment.noise_ratio", 1.3, "automatic k: largest within-cluster scatter per measured feature (PCA scores, XRF), as a multiple of the noise (half the squared feature difference of adjacent pixels, median); larger: fewer clusters", 1, 100, true},
      {"segment.merge", true, "automatic k groups its k-means clusters (up to 2·segment.k_max) into domains: clusters whose pixels fill the segment between their centres (one cloud), and, with references and no XRF/position features, clusters whose mean spectra have the same majority reference (≥ 50 %) and together need at most two references (≥ segment.merge_fraction) or the same ones: one composition drifting smoothly is one domain. false: each cluster is a domain", -1e300, 1e300, true},
      {"segment.merge_fraction", 0.05, "automatic k with segment.merge: a reference is needed by a cluster's mean spectrum when its fraction is at least this", 0.001, 0.5, true},
      {"segment.smoothing", 1.0, "spatially coherent labels: Potts prior over 4-neighbours (ICM), cost per neighbour in another domain in units of the data term's log-likelihood, whose noise is measured per pixel (∝ 1/edge size: thin, noisy pixels follow their neighbours; a one-pixel line keeps its own spectrum's label); 0: off", 0, 100, true},
      {"segment.components", 0, "PCA components used as spectral features; 0: enough to explain segment.variance, at most the components above the noise floor and segment.max_components", 0, 64, true},
      {"segment.variance", 0.99, "explained-variance target for the automatic number of components", 0.5, 1, true},
      {"segment.max_components", 8, "cap on the automatic number of components", 1, 64, true},
      {"segment.spectral_weight", 1.0, "weight of the spectral (PCA) feature block; each block is scaled to total variance weight²", 0, 1e3, true},
      {"segment.spatial_weight", 0.0, "weight of the pixel-position block (row, column); 0: off. Favours compact domains", 0, 1e3, true},
      {"segment.xrf_weight", 0.0, "weight of the XRF block (the scan's XRF channels, each standardized); 0: off", 0, 1e3, true},
      {"segment.sample", 20000, "pixels the PCA and k-means are fitted on at each update (every pixel is then labelled)", 100, 10000000, true},
      {"segment.seed", 1, "random seed of the pixel sample and k-means++ (a scan's segmentation is reproducible)", 0, 9.2e18, true},
      {"select.n", 13, "select_energies: energies chosen besides the normalization points (the MPIS work: 13 + 3 of 75); 0: automatic (objective equal_time: the smallest n whose predicted fraction RMSE at equal beam time is within select.n_tolerance of the best)", 0, 1000, true},
      {"select.normalization_points", 3, "select_energies: pre- and post-edge points always included (n/3 post-edge, the rest pre-edge)", 0, 100, true},
      {"select.train_mixtures", 2000, "select_energies: synthetic mixtures the RFE regression is trained on; at most 100,000, and candidates × (train + test) ≤ 2·10⁷ per request", 10, 100000, true},
      {"select.test_mixtures", 1000, "select_energies: held-out mixtures both selections (and the full grid) are scored on; at most 100,000, and candidates × (train + test) ≤ 2·10⁷ per request", 10, 100000, true},
      {"select.noise", 0.0, "select_energies: noise σ per point of the mixtures, on edge-normalized spectra; 0: measured on the current scan (median RMS residual / thickness of the kept pixels), 0.01 without one", 0, 10, true},
      {"select.seed", 1, "select_energies: random seed of the mixtures (a selection is reproducible)", 0, 9.2e18, true},
      {"select.objective", "equal_time", "select_energies: 'equal_time' (the default): energies and dwell weights minimizing the fraction error at the full grid's total beam time (A-optimal dwell design, Poisson variances in fluorescence); 'equal_dwell': the best of RFE and A-optimal at even dwell (the selection before dwell weights)", -1e300, 1e300, true},
      {"select.n_tolerance", 0.05, "select_energies with n auto: the smallest n whose predicted fraction RMSE at equal beam time is at most (1 + this) × the best n's", 0.001, 10, true},
      {"select.variance_floor", 0.01, "select_energies, objective equal_time: floor of the expected spectrum in the Poisson variance profile (edge-step units: the fluorescence background before the edge)", 1e-6, 10, true},
      {"output.directory", "results", "folder for result files <scan_id>.h5 (relative to the working directory)"},
      {"output.write_on_stop", true, "write the result file when a scan stops"},
      {"output.reused_scan_id", "suffix", "a start whose scan_id has a result file in output.directory already: 'suffix' (the new scan is written to <scan_id>-2.h5, -3, …; scan_id_reused says so) or 'refuse' (the start is rejected with scan_id_exists; nothing is recorded)"},
      {"output.save_spectra", true, "also write the normalized spectra (/entry/data/spectra, E×rows×cols float32) for reprocessing; 1.6 GB for a 2048² × 100 scan"},
      {"output.batch_spectra_max_pixels", 262144, "xanesd fit (batch): writes the normalized spectra (with output.save_spectra) only for scans up to this many pixels. A larger batch run opts in by raising it: writing them costs more than reading the scan file, which holds the same data", 0, 1e12},
      {"security.server_key", "", "CURVE (CurveZMQ) key pair file of the daemon, made by `xanesd keygen --out NAME` (NAME.key; give clients NAME.pub), relative to the config file's folder. Set: every socket (ingest, results, control) requires CURVE and a client key listed below. Empty: no encryption or authentication, and every endpoint must be loopback (127.0.0.1, localhost, ipc://, inproc://)"},
      {"security.ingest_clients", nlohmann::json::array(), "public key files (NAME.pub from `xanesd keygen`) of the senders allowed on the ingest socket"},
      {"security.control_clients", nlohmann::json::array(), "public key files of the clients allowed every control command (and the results socket)"},
      {"security.readonly_clients", nlohmann::json::array(), "public key files of the clients allowed the read-only control commands, status, snapshot and pixel (and the results socket)"},
      {"journal.enabled", true, "crash-safe scans: append every accepted start, frame and stop to a journal, so a daemon killed mid-scan reopens the scan at restart (README: Crash-safe scans). Off: a crash loses the running scan"},
      {"journal.directory", "", "folder of the scan journal (one file, the current or last scan's, and the one before while its result file is written beside the next scan; a lock keeps a second daemon out); empty: output.directory/.journal"},
      {"journal.fsync_ms", 1000, "journal durability: a frame is acknowledged once written to the journal (page cache: survives a crash of the process); fdatasync runs every this many ms in the background, so a power cut loses at most the last interval's frames. 0: fdatasync after every frame (survives power loss, costs ingest throughput); -1: never", -1, 3.6e6},
      {"journal.queue_MiB", 256.0, "records (frames) waiting for the journal's writer thread, which computes their checksums and writes them while the pipeline goes on with the next frame; a frame is acknowledged (journal.last_seq) once written. When this much is waiting the pipeline waits (nothing is dropped). 0: no writer thread, each record written by the pipeline before the next message", 0, 65536},
      {"log.level", "info", "spdlog level: trace, debug, info, warn, error"},
  };
  return keys;
}

namespace {

const ConfigKey* find_key(const std::string& key) {
  for (const auto& k : config_keys())
    if (k.key == key) return &k;
  return nullptr;
}

void flatten(const nlohmann::json& j, const std::string& prefix, nlohmann::json& out) {
  for (const auto& [k, v] : j.items()) {
    const std::string key = prefix.empty() ? k : prefix + "." + k;
    const auto* spec = find_key(key);
    if (v.is_object() && !(spec && spec->fallback.is_object())) flatten(v, key, out);  // references.libraries stays whole
    else out[key] = v;
  }
}

bool same_type(const nlohmann::json& fallback, const nlohmann::json& v) {
  if (fallback.is_number()) return v.is_number() && (!fallback.is_number_integer() || v.is_number_integer());
  return fallback.type() == v.type();
}

std::string type_name(const nlohmann::json& fallback) {
  if (fallback.is_number_integer()) return "an integer";
  if (fallback.is_number()) return "a number";
  if (fallback.is_boolean()) return "true or false";
  if (fallback.is_array()) return "a list";
  return "a string";
}

void check_value(const ConfigKey& spec, const nlohmann::json& v) {
  if (!same_type(spec.fallback, v))
    throw ConfigError("config key '" + spec.key + "' must be " + type_name(spec.fallback) + ", got " +
                      v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));  // --set text may be any bytes
  if (v.is_number()) {
    const double d = v.get<double>();
    if (!(d >= spec.min && d <= spec.max)) {
      std::ostringstream m;
      m << "config key '" << spec.key << "' = " << d << " is outside [" << spec.min << ", " << spec.max << "]";
      throw ConfigError(m.str());
    }
  }
}

Config build(const nlohmann::json& flat, const std::filesystem::path& base_dir) {
  Config c;
  c.effective = flat;
  auto str = [&](const char* k) { return flat.at(k).get<std::string>(); };
  auto num = [&](const char* k) { return flat.at(k).get<double>(); };
  auto integer = [&](const char* k) { return flat.at(k).get<int>(); };
  c.ingest = {str("ingest.endpoint"), integer("ingest.queue_frames"), num("ingest.queue_MiB"), integer("ingest.rcvhwm"),
              num("ingest.energy_tolerance_eV"), num("ingest.min_transmission"), num("ingest.max_scan_GiB"),
              num("ingest.max_message_MiB"), num("ingest.beside_finish_MiB")};
  c.publish = {str("publish.endpoint"), integer("publish.interval_ms"), integer("publish.sndhwm")};
  c.control = {str("control.endpoint"), integer("control.reply_timeout_ms")};
  for (const auto& f : flat.at("references.files")) {
    if (!f.is_string()) throw ConfigError("config key 'references.files' must be a list of paths");
    std::filesystem::path p = f.get<std::string>();
    c.references.files.push_back(p.is_absolute() ? p : base_dir / p);
  }
  for (const auto& [name, v] : flat.at("references.libraries").items()) {
    const auto bad = "config key 'references.libraries': '" + name + "' must name a folder or reference files (a path or a list of paths)";
    if (name.empty() || !(v.is_string() || (v.is_array() && !v.empty()))) throw ConfigError(bad);
    auto& files = c.references.libraries[name];
    for (const auto& f : v.is_string() ? nlohmann::json::array({v}) : v) {
      if (!f.is_string() || f.get<std::string>().empty()) throw ConfigError(bad);
      std::filesystem::path p = f.get<std::string>();
      files.push_back(p.is_absolute() ? p : base_dir / p);
    }
  }
  c.references.margin_eV = num("references.margin_eV");
  c.references.normalize = str("references.normalize");
  c.references.energy_unit = str("references.energy_unit");
  if (c.references.energy_unit != "auto" && c.references.energy_unit != "eV" && c.references.energy_unit != "keV")
    throw ConfigError("config key 'references.energy_unit' must be 'auto', 'eV' or 'keV', got '" + c.references.energy_unit + "'");
  if (c.references.normalize != "auto" && c.references.normalize != "always" && c.references.normalize != "never")
    throw ConfigError("config key 'references.normalize' must be 'auto', 'always' or 'never', got '" + c.references.normalize + "'");
  auto& sel = c.references.selection;
  sel.enabled = flat.at("references.select").get<bool>();
  sel.penalty = num("references.select_penalty");
  sel.min_share = num("references.select_min_share");
  sel.hysteresis = num("references.select_hysteresis");
  sel.max_tiles = integer("references.select_max_tiles");
  sel.stability_samples = integer("references.select_stability");
  sel.collinear_cos = num("references.collinear_cos");
  c.fit = {str("fit.method"), flat.at("fit.background").get<bool>(), flat.at("fit.sum_to_one").get<bool>(),
           num("fit.lasso_alpha"), flat.at("fit.lasso_refit").get<bool>(), integer("fit.threads"), str("fit.weighting")};
  c.fit.spatial = {flat.at("fit.spatial").get<bool>(), integer("fit.spatial_radius"), num("fit.spatial_strength"),
                   num("fit.spatial_min_snr")};
  c.fit.spatial_live_max_pixels = num("fit.spatial_live_max_pixels");
  if (c.fit.weighting != "none" && c.fit.weighting != "poisson" && c.fit.weighting != "auto")
    throw ConfigError("config key 'fit.weighting' must be 'auto', 'none' or 'poisson', got '" + c.fit.weighting + "'");
  c.fit.poisson_max_pixels = num("fit.poisson_max_pixels");
  if (c.fit.method != "nnls" && c.fit.method != "least_squares" && c.fit.method != "lasso")
    throw ConfigError("config key 'fit.method' must be 'nnls', 'least_squares' or 'lasso', got '" + c.fit.method + "'");
  c.edge = {num("edge.e0_eV"), num("edge.pre1_eV"), num("edge.pre2_eV"), num("edge.norm1_eV"), num("edge.norm2_eV"),
            integer("edge.nnorm")};
  c.mask = {num("mask.thickness_min"), num("mask.thickness_min_relative"), num("mask.residual_max"), num("mask.rfactor_max")};
  c.segment.enabled = flat.at("segment.enabled").get<bool>();
  c.segment.k = integer("segment.k");
  c.segment.k_max = integer("segment.k_max");
  c.segment.noise_ratio = num("segment.noise_ratio");
  c.segment.merge = flat.at("segment.merge").get<bool>();
  c.segment.merge_fraction = num("segment.merge_fraction");
  c.segment.smoothing = num("segment.smoothing");
  c.segment.components = integer("segment.components");
  c.segment.variance = num("segment.variance");
  c.segment.max_components = integer("segment.max_components");
  c.segment.spectral_weight = num("segment.spectral_weight");
  c.segment.spatial_weight = num("segment.spatial_weight");
  c.segment.xrf_weight = num("segment.xrf_weight");
  c.segment.sample = integer("segment.sample");
  c.segment.seed = flat.at("segment.seed").get<std::uint64_t>();
  c.segment.interval_ms = integer("segment.interval_ms");
  c.select = {integer("select.n"), integer("select.normalization_points"), integer("select.train_mixtures"),
              integer("select.test_mixtures"), num("select.noise"), flat.at("select.seed").get<std::uint64_t>(),
              str("select.objective"), num("select.n_tolerance"), num("select.variance_floor")};
  if (c.select.objective != "equal_time" && c.select.objective != "equal_dwell")
    throw ConfigError("config key 'select.objective' must be 'equal_time' or 'equal_dwell', got '" + c.select.objective + "'");
  c.output = {str("output.directory"), flat.at("output.write_on_stop").get<bool>(), flat.at("output.save_spectra").get<bool>(),
              num("output.batch_spectra_max_pixels"), str("output.reused_scan_id")};
  if (c.output.reused_scan_id != "suffix" && c.output.reused_scan_id != "refuse")
    throw ConfigError("config key 'output.reused_scan_id' must be 'suffix' or 'refuse', got '" + c.output.reused_scan_id + "'");
  auto paths = [&](const char* key) {
    std::vector<std::filesystem::path> out;
    for (const auto& f : flat.at(key)) {
      if (!f.is_string()) throw ConfigError(std::string("config key '") + key + "' must be a list of paths");
      std::filesystem::path p = f.get<std::string>();
      out.push_back(p.is_absolute() ? p : base_dir / p);
    }
    return out;
  };
  if (const auto key = str("security.server_key"); !key.empty())
    c.security.server_key = std::filesystem::path(key).is_absolute() ? std::filesystem::path(key) : base_dir / key;
  c.security.ingest_clients = paths("security.ingest_clients");
  c.security.control_clients = paths("security.control_clients");
  c.security.readonly_clients = paths("security.readonly_clients");
  c.journal = {flat.at("journal.enabled").get<bool>(), str("journal.directory"), integer("journal.fsync_ms"),
               static_cast<std::size_t>(num("journal.queue_MiB") * 1048576.0)};
  if (c.journal.directory.empty()) c.journal.directory = c.output.directory / ".journal";  // a scan_id never starts with '.'
  c.log_level = str("log.level");
  static const char* levels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  if (std::find(std::begin(levels), std::end(levels), c.log_level) == std::end(levels))
    throw ConfigError("config key 'log.level' must be one of trace, debug, info, warn, error, got '" + c.log_level + "'");
  return c;
}

}  // namespace

Config make_config(const nlohmann::json& file_json, const std::vector<std::string>& overrides,
                   const std::filesystem::path& base_dir) {
  if (!file_json.is_object()) throw ConfigError("config must be a JSON object");
  nlohmann::json given = nlohmann::json::object();
  flatten(file_json, "", given);
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) throw ConfigError("--set needs key=value, got '" + o + "'");
    const std::string key = o.substr(0, eq), text = o.substr(eq + 1);
    nlohmann::json v = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (v.is_discarded()) v = text;  // bare strings need no quotes on the command line
    given[key] = v;
  }
  nlohmann::json flat = nlohmann::json::object();
  for (const auto& k : config_keys()) flat[k.key] = k.fallback;
  for (const auto& [key, v] : given.items()) {
    const auto* spec = find_key(key);
    if (!spec) throw ConfigError("unknown config key '" + key + "' (see config/README.md)");
    check_value(*spec, v);
    flat[key] = v;
  }
  return build(flat, base_dir);
}

Config load_config(const std::filesystem::path& file, const std::vector<std::string>& overrides) {
  std::ifstream in(file);
  if (!in) throw ConfigError("cannot read config file '" + file.string() + "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in, nullptr, true, /*ignore_comments=*/true);
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for a number that overflows
    throw ConfigError("config file '" + file.string() + "' is not valid JSON: " + e.what());
  }
  return make_config(j, overrides, std::filesystem::absolute(file).parent_path());
}

Config reconfigure(const Config& current, const nlohmann::json& changes) {
  if (!changes.is_object()) throw ConfigError("'set' must be an object of dotted keys");
  nlohmann::json flat = current.effective;
  for (const auto& [key, v] : changes.items()) {
    const auto* spec = find_key(key);
    if (!spec) throw ConfigError("unknown config key '" + key + "'");
    if (!spec->runtime) throw ConfigError("config key '" + key + "' can only be set at start-up");
    check_value(*spec, v);
    flat[key] = v;
  }
  Config c = build(flat, "/");
  c.references = current.references;  // paths were resolved at start-up
  return c;
}

std::vector<std::filesystem::path> library_files(const std::string& name, const std::vector<std::filesystem::path>& paths) {
  std::vector<std::filesystem::path> out;
  for (const auto& p : paths) {
    std::error_code ec;
    if (std::filesystem::is_directory(p, ec)) {
      std::vector<std::filesystem::path> in_folder;
      for (const auto& e : std::filesystem::directory_iterator(p, ec))
        if (e.is_regular_file() && e.path().filename().string().front() != '.') in_folder.push_back(e.path());
      std::sort(in_folder.begin(), in_folder.end());
      if (in_folder.empty()) throw ConfigError("reference library '" + name + "': folder '" + p.string() + "' has no files");
      out.insert(out.end(), in_folder.begin(), in_folder.end());
    } else if (std::filesystem::exists(p, ec)) {
      out.push_back(p);
    } else {
      throw ConfigError("reference library '" + name + "': '" + p.string() + "' does not exist");
    }
  }
  return out;
}

std::string config_keys_markdown() {
  std::ostringstream o;
  o << "| key | default | runtime | meaning |\n| --- | --- | --- | --- |\n";
  for (const auto& k : config_keys())
    o << "| `" << k.key << "` | `" << k.fallback.dump() << "` | " << (k.runtime ? "yes" : "no") << " | " << k.doc << " |\n";
  return o.str();
}

}  // namespace xanesd
