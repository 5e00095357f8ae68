// `xanesd fit`: reprocess a finished scan file with the daemon's own code path (the same
// reader, validation, normalization, incremental fit and result file), no sockets.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"

namespace xanesd {

struct BatchOptions {
  std::filesystem::path input, output;
  std::vector<std::filesystem::path> reference_files;  // empty: references.files of the config
  std::vector<std::string> reference_names;            // keep only these, in this order (empty: all)
};

// Fits the scan and writes the result file; returns a summary (scan, counters by issue code).
// Throws ConfigError / std::runtime_error with a clear message on unusable input.
nlohmann::json run_batch_fit(const Config& cfg, const BatchOptions& opt);

// The `xanesd fit ...` command line; returns the process exit code.
int batch_main(int argc, char** argv);

}  // namespace xanesd
