#include "batch.hpp"

#include <chrono>
#include <cstring>
#include <span>
#include <cstdio>
#include <iostream>
#include <map>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "daemon.hpp"
#include "parallel/blocks.hpp"
#include "parallel/comm.hpp"
#include "progress.hpp"
#include "scan/scan.hpp"
#include "store/result_file.hpp"
#include "store/scan_file.hpp"

namespace xanesd {

using parallel::row_blocks;

namespace {

// Seconds spent in each step of the fit (the summary's `timing`: bench/run_mpi_benchmark.sh).
class StepTimes {
 public:
  using Clock = std::chrono::steady_clock;
  // Runs f and adds its time to `step`.
  template <class F>
  decltype(auto) time(const char* step, F&& f) {
    const auto t0 = Clock::now();
    struct Add {
      StepTimes& s;
      const char* step;
      Clock::time_point t0;
      ~Add() { s.seconds_[step] += std::chrono::duration<double>(Clock::now() - t0).count(); }
    } add{*this, step, t0};
    return f();
  }
  double operator[](const char* step) const {
    const auto it = seconds_.find(step);
    return it == seconds_.end() ? 0.0 : it->second;
  }
  nlohmann::json to_json() const { return seconds_; }
  void set(const char* step, double s) { seconds_[step] = s; }

 private:
  std::map<std::string, double> seconds_;
};

}  // namespace

nlohmann::json run_batch_fit(const Config& cfg, const BatchOptions& opt, const parallel::Comm& comm) {
  ReferencesConfig refs_cfg = cfg.references;
  if (!opt.reference_files.empty()) refs_cfg.files = opt.reference_files;
  auto refs = load_references(refs_cfg);
  if (!opt.reference_names.empty()) {
    std::vector<science::Reference> picked;
    for (const auto& n : opt.reference_names) {
      auto it = std::find_if(refs.begin(), refs.end(), [&](const auto& r) { return r.name == n; });
      if (it == refs.end()) throw ConfigError("--names: no reference named '" + n + "' in the reference files");
      picked.push_back(*it);
    }
    refs = std::move(picked);
  }
  const bool root = comm.rank() == 0, quiet = opt.quiet || !root;
  auto settings = scan_settings(cfg);
  ScanFileOptions read_opt;
  read_opt.borrow_buffers = true;  // each frame is applied (copied into the store) before the next is read
  // Several ranks (README "MPI"): each reads and fits its block of rows plus the halo rows the
  // spatial step reads, the image-level steps combine every block's own pixels.
  StepTimes times;
  const auto t_start = StepTimes::Clock::now();
  science::ImagePart part;
  int window0 = 0;
  std::vector<std::pair<int, int>> blocks;
  nlohmann::json rank_timing = nlohmann::json::array();
  // A volume is fitted as the image of its slices stacked (README "Volumes").
  const auto shape = scan_file_image(opt.input, comm.h5_file_access());
  const int rows = shape.rows, cols = shape.cols;
  settings.slice_rows = shape.slice_rows;
  if (comm.size() > 1) {
    const bool selecting = settings.selection.enabled && refs.size() >= 2;
    blocks = row_blocks(rows, comm.size(), selecting ? science::selection_tile_side(rows, cols, settings.selection.max_tiles) : 1);
    const auto [own0, own1] = blocks[static_cast<std::size_t>(comm.rank())];
    const int halo = settings.spatial.enabled ? settings.spatial.radius : 0;  // pass 3's window (the pilot's is smaller)
    window0 = std::max(0, own0 - halo);
    read_opt.row_begin = window0, read_opt.row_end = std::min(rows, own1 + halo);
    read_opt.file_access = comm.h5_file_access(), read_opt.transfer = comm.h5_transfer();
    part.begin = static_cast<std::size_t>(own0 - window0) * static_cast<std::size_t>(cols);
    part.end = static_cast<std::size_t>(own1 - window0) * static_cast<std::size_t>(cols);
    part.row0 = own0, part.image_rows = rows;
    part.gather = [&comm, &times](std::vector<float> v) { return times.time("reduce", [&] { return comm.all_gather(v); }); };
    part.sum = [&comm, &times](std::span<double> v) { times.time("reduce", [&] { comm.sum(v); }); };
    part.send_row = [&comm](int side, std::span<const std::uint8_t> row) { comm.send(comm.rank() + side, std::as_bytes(row)); };
    part.receive_row = [&comm](int side, std::span<std::uint8_t> row) { comm.receive(comm.rank() + side, std::as_writable_bytes(row)); };
  }
  std::unique_ptr<Scan> scan;
  std::map<std::string, std::int64_t> issues;
  auto note = [&](const Issue& i) {
    ++issues[i.code];
    spdlog::warn("[{}] {}", i.code, i.message);
  };
  // Frames are read and fitted as they come (the incremental fit), so frames read is the fit's progress.
  Progress progress("xanesd fit", "frames", quiet);
  std::int64_t frames = 0;
  // Reading is the reader's time less what applying its messages took (normalization, folds).
  times.time("read", [&] {
    read_scan_file(opt.input, read_opt, [&](protocol::IngestMessage&& msg) {
      times.time("apply", [&] {
        if (auto* s = std::get_if<protocol::StartMsg>(&msg)) {
          progress.set_total(scan_file_frames(*s, read_opt));
          scan = std::make_unique<Scan>(std::move(*s), refs, settings, part);
        } else if (auto* f = std::get_if<protocol::FrameMsg>(&msg)) {
          for (const auto& i : scan->apply(*f).issues) note(i);
          progress.update(++frames);
        } else {
          for (const auto& i : scan->stop(std::get<protocol::StopMsg>(msg))) note(i);
        }
      });
    });
  });
  times.set("read", times["read"] - times["apply"]);
  if (!scan->fit_error().empty()) throw std::runtime_error(scan->fit_error());
  if (!quiet)
    std::fprintf(stderr, "xanesd fit: %lld frames read; final fit of %lld pixels%s, reference selection, segments, edge maps\n",
                 static_cast<long long>(frames), static_cast<long long>(scan->pixels()),
                 comm.size() > 1 ? " (rank 0's block)" : "");
  times.time("fit", [&] {
    scan->solve_changed(solve_threads(cfg));
    scan->update_reference_selection(solve_threads(cfg));
    scan->solve_changed(solve_threads(cfg));  // the final maps: Poisson-weighted once the references are chosen
  });
  // Side by side: "segments" and "edge_maps" overlap in time ("analysis" is their wall time).
  // In an MPI job each rank segments and maps its block, the blocks' sample, cluster sums,
  // smoothing borders and mean spectrum combined (README "MPI").
  const auto analysis = times.time("analysis", [&] { return scan->segment_and_map_edges(solve_threads(cfg)); });
  times.set("segments", analysis.segments_s), times.set("edge_maps", analysis.edge_maps_s);
  for (const auto& error : {analysis.segments_error, analysis.edge_maps_error})
    if (error) std::rethrow_exception(error);
  const auto image_npix = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
  const bool spectra = cfg.output.save_spectra && static_cast<double>(image_npix) <= cfg.output.batch_spectra_max_pixels;
  if (cfg.output.save_spectra && !spectra && root)
    spdlog::info("{} pixels > output.batch_spectra_max_pixels: the normalized spectra are not written (raise it to opt in)",
                 image_npix);
  // Rank 0 waits here for the slowest block (the imbalance), so "gather" is the transfer only.
  times.time("wait", [&] { comm.barrier(); });
  // In an MPI job every rank writes its own rows of the result file's per-pixel datasets (the
  // maps, labels, edge maps, XRF, spectra); rank 0 needs only what is the image's: every block's
  // issue counts and flagged samples, and a whole-image scan to describe (README "MPI").
  std::unique_ptr<Scan> image;
  if (comm.size() > 1) times.time("gather", [&] {
    // With each rank's step times so far (the summary's rank_timing: which block was slow).
    const auto counts =
        nlohmann::json{{"issues", issues}, {"flags", scan->flagged_samples()}, {"timing", times.to_json()}}.dump() + '\n';
    const auto all = comm.gather(std::as_bytes(std::span<const char>(counts)));
    if (!root) return;
    // Issues and flagged samples: every block's (a halo row's samples are counted by both blocks
    // that read it).
    Scan::ImageResults whole_image;
    issues.clear();
    const std::string text(reinterpret_cast<const char*>(all.data()), all.size());
    std::size_t at = 0;
    for (auto end = text.find('\n'); end != std::string::npos; at = end + 1, end = text.find('\n', at)) {
      const auto j = nlohmann::json::parse(text.substr(at, end - at));
      for (const auto& [code, n] : j["issues"].items()) issues[code] += n.get<std::int64_t>();
      for (const auto& [code, n] : j["flags"].items()) whole_image.flags[code] += n.get<std::int64_t>();
      rank_timing.push_back(j["timing"]);
    }
    // The clusters, PCA and edge ranges are the same on every rank; the per-pixel maps stay
    // with the blocks.
    if (const auto* seg = scan->segmentation()) {
      whole_image.segmentation = *seg;
      whole_image.segmentation->labels.clear();
    }
    if (const auto* edge = scan->edge_maps()) {
      whole_image.edge_maps.emplace();
      whole_image.edge_maps->ranges = edge->ranges, whole_image.edge_maps->computed = edge->computed;
    }
    const auto& block = scan->start();  // dark and flat are in the store's signal already
    protocol::StartMsg whole;
    whole.scan_id = block.scan_id, whole.rows = rows, whole.cols = cols, whole.energies_eV = block.energies_eV;
    whole.mode = block.mode, whole.order = block.order, whole.xrf_channels = block.xrf_channels;
    whole.references = block.references, whole.metadata = block.metadata;
    image = Scan::assemble(std::move(whole), refs, settings, std::move(whole_image), *scan);
  });
  const Scan* described = comm.size() > 1 ? image.get() : scan.get();  // null on ranks other than 0
  nlohmann::json counters = nlohmann::json::object();
  for (const auto& [code, n] : issues) counters["issues." + code] = n;
  // The file records the arguments this fit ran with, not only the config's defaults.
  auto effective = cfg.effective;
  effective["references.files"] = nlohmann::json::array();
  for (const auto& f : refs_cfg.files) effective["references.files"].push_back(std::filesystem::absolute(f).lexically_normal().string());
  if (!opt.reference_names.empty()) effective["references.names"] = opt.reference_names;
  effective["input"] = std::filesystem::absolute(opt.input).lexically_normal().string();
  times.time("write", [&] { write_result_file(opt.output, described, *scan, effective, counters, spectra, comm); });
  if (!root) {
    const auto [r0, r1] = blocks[static_cast<std::size_t>(comm.rank())];
    return {{"rank", comm.rank()}, {"rows", {r0, r1}}, {"timing", times.to_json()}};
  }
  times.set("total", std::chrono::duration<double>(StepTimes::Clock::now() - t_start).count());
  nlohmann::json summary = {{"scan", described->summary()}, {"counters", counters}, {"output", opt.output.string()}};
  // Seconds per step; "fit" includes "reduce" (the image-level statistics of the blocks).
  summary["timing"] = times.to_json();
  if (comm.size() > 1) summary["ranks"] = comm.size(), summary["rank_timing"] = rank_timing;
  return summary;
}

nlohmann::json run_batch_fit(const Config& cfg, const BatchOptions& opt) { return run_batch_fit(cfg, opt, parallel::SerialComm()); }

int batch_command(const std::filesystem::path& config_file, const std::vector<std::string>& overrides, const BatchOptions& opt) {
  // stdout carries the JSON summary (a script parses it): the log goes to stderr.
  if (!spdlog::get("xanesd-fit")) spdlog::set_default_logger(spdlog::stderr_color_mt("xanesd-fit"));
  const auto comm = parallel::start();  // MPI_COMM_WORLD under mpirun (MPI build), else one process
  // A rank that fails ends the job: the others would wait for it in a collective.
  auto fail = [&](int code) {
    comm->abort(code);
    return code;
  };
  try {
    const Config cfg = config_file.empty() ? make_config(nlohmann::json::object(), overrides, std::filesystem::current_path())
                                           : load_config(config_file, overrides);
    spdlog::set_level(spdlog::level::from_str(cfg.log_level));
    const auto t0 = std::chrono::steady_clock::now();
    const auto summary = run_batch_fit(cfg, opt, *comm);
    if (comm->rank() != 0) return 0;
    if (!opt.quiet)
      std::fprintf(stderr, "xanesd fit: wrote %s in %.1f s\n", opt.output.string().c_str(),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    std::cout << summary.dump(2) << "\n";
    return 0;
  } catch (const ConfigError& e) {
    if (comm->rank() == 0) std::fprintf(stderr, "xanesd fit: configuration error: %s\n", e.what());
    return 2;  // every rank finds the same configuration error
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xanesd fit: %s%s\n", comm->size() > 1 ? ("rank " + std::to_string(comm->rank()) + ": ").c_str() : "",
                 e.what());
    return fail(1);
  }
}

}  // namespace xanesd
