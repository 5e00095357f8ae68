// The daemon's configuration: parsed once at start-up into typed structs. Every key is in
// one table (config.cpp) with its default, unit and documentation; unknown keys, wrong types
// and out-of-range values are errors that name the key.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "science/reference_selection.hpp"
#include "science/segmentation.hpp"
#include "science/spatial_fit.hpp"

namespace xanesd {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct IngestConfig {
  std::string endpoint;
  int queue_frames = 0;
  double queue_MiB = 0;
  int rcvhwm = 0;
  double energy_tolerance_eV = 0;
  double min_transmission = 0;
  double max_scan_GiB = 0;
  double max_message_MiB = 0;  // 0: derived from max_scan_GiB (max_message_bytes)
  double beside_finish_MiB = 0;  // a start beside the last scan's finish: both scans' memory at most this
};
// ZMQ_MAXMSGSIZE of the ingest socket: the largest single message part (one array) a peer may
// send; a larger one drops its connection before it is received whole.
std::int64_t max_message_bytes(const IngestConfig& cfg);
struct PublishConfig {
  std::string endpoint;
  int interval_ms = 0;
  int sndhwm = 0;
};
struct ControlConfig {
  std::string endpoint;
  int reply_timeout_ms = 0;
};
struct ReferencesConfig {
  std::vector<std::filesystem::path> files;  // resolved against the config file's folder
  std::map<std::string, std::vector<std::filesystem::path>> libraries;  // named sets a start may ask for (folders or files)
  double margin_eV = 0;
  std::string normalize;  // auto | always | never
  std::string energy_unit;  // auto | eV | keV
  science::ReferenceSelectionSettings selection;
};
struct FitConfig {
  std::string method;
  bool background = true;
  bool sum_to_one = false;
  double lasso_alpha = 5e-4;
  bool lasso_refit = true;
  int threads = 0;  // 0: all cores
  std::string weighting = "auto";  // auto | none | poisson
  double poisson_max_pixels = 1048576;
  science::SpatialSettings spatial;
  double spatial_live_max_pixels = 1048576;
};
struct EdgeConfig {  // per-pixel edge maps; 0 (nnorm −1) = Larch's automatic choice
  double e0_eV = 0, pre1_eV = 0, pre2_eV = 0, norm1_eV = 0, norm2_eV = 0;
  int nnorm = -1;
};
struct MaskConfig {
  double thickness_min = 0, thickness_min_relative = 0, residual_max = 0, rfactor_max = 0;
};
struct SelectConfig {  // energy selection defaults (control `select_energies` may override each)
  int n = 13, normalization_points = 3, train_mixtures = 2000, test_mixtures = 1000;
  double noise = 0;  // 0: measured on the scan
  std::uint64_t seed = 1;
  std::string objective = "equal_time";  // "equal_time" (dwell design) or "equal_dwell" (RFE / A-optimal at even dwell)
  double n_tolerance = 0.05;             // n auto (n = 0 or "auto"): within this of the best predicted RMSE
  double variance_floor = 0.01;          // Poisson variance profile floor, edge-step units
};
struct OutputConfig {
  std::filesystem::path directory;
  bool write_on_stop = true;
  bool save_spectra = true;
  double batch_spectra_max_pixels = 262144;  // xanesd fit: spectra written only up to this many pixels
  std::string reused_scan_id = "suffix";     // suffix | refuse
};

struct SecurityConfig {  // CURVE on every socket when server_key is set (service/security/curve.hpp)
  std::filesystem::path server_key;  // empty: no CURVE, loopback endpoints only
  std::vector<std::filesystem::path> ingest_clients, control_clients, readonly_clients;  // public key files
};
struct JournalConfig {
  bool enabled = true;
  std::filesystem::path directory;  // resolved: output.directory/.journal when not configured
  int fsync_ms = 1000;              // 0: fdatasync every record; −1: never
  std::size_t queue_bytes = 256u << 20;  // records waiting for the writer thread; 0: no thread, written on append
};

struct Config {
  IngestConfig ingest;
  PublishConfig publish;
  ControlConfig control;
  ReferencesConfig references;
  FitConfig fit;
  MaskConfig mask;
  EdgeConfig edge;
  science::SegmentationSettings segment;
  SelectConfig select;
  OutputConfig output;
  SecurityConfig security;
  JournalConfig journal;
  std::string log_level;
  nlohmann::json effective;  // the whole config as dotted-key JSON, for status and result files
};

struct ConfigKey {
  std::string key;          // dotted, e.g. "publish.interval_ms"
  nlohmann::json fallback;  // default value; also fixes the type
  std::string doc;
  double min = -1e300, max = 1e300;  // for numbers
  bool runtime = false;              // may be changed with the control `configure` command
};
const std::vector<ConfigKey>& config_keys();

// The most the buffers around the pipeline hold of a scan whose frames are `frame_bytes` each
// (README "Memory"): ZeroMQ's receive queue (ingest.rcvhwm frames and the one being received),
// the ingest queue (ingest.queue_MiB, or one larger frame) and the journal's write queue
// (journal.queue_MiB, likewise).
double ingest_buffer_bytes(const Config& cfg, double frame_bytes);

// The files of a named reference library (references.libraries): each folder's regular files,
// sorted by name, and the files given. Throws ConfigError for a path that does not exist.
std::vector<std::filesystem::path> library_files(const std::string& name, const std::vector<std::filesystem::path>& paths);

// Builds a Config from a (possibly nested) JSON object plus "key=value" overrides (value
// parsed as JSON, else taken as a string). base_dir resolves relative reference paths.
Config make_config(const nlohmann::json& file_json, const std::vector<std::string>& overrides,
                   const std::filesystem::path& base_dir);
Config load_config(const std::filesystem::path& file, const std::vector<std::string>& overrides);
// Applies runtime changes {"fit.method": "least_squares"} to an existing config; rejects
// keys that are not runtime-changeable.
Config reconfigure(const Config& current, const nlohmann::json& changes);

// Markdown table of all keys (written into config/README.md).
std::string config_keys_markdown();

}  // namespace xanesd
