// `xanesd fit`: reprocess a finished scan file with the daemon's own code path (the same
// reader, validation, normalization, incremental fit and result file), no sockets.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"

namespace xanesd::parallel {
class Comm;
}

namespace xanesd {

struct BatchOptions {
  std::filesystem::path input, output;
  std::vector<std::filesystem::path> reference_files;  // empty: references.files of the config
  std::vector<std::string> reference_names;            // keep only these, in this order (empty: all)
  bool quiet = false;                                   // no progress lines on stderr
};

// Fits the scan and writes the result file; returns a summary (scan, counters by issue code).
// Throws ConfigError / std::runtime_error with a clear message on unusable input.
nlohmann::json run_batch_fit(const Config& cfg, const BatchOptions& opt);
// The same on every rank of `comm` (xanesd fit under mpirun, README "MPI"): each rank reads and
// fits its block of rows and writes its rows of the result file (rank 0 its structure), which
// equals the one-process fit's.
nlohmann::json run_batch_fit(const Config& cfg, const BatchOptions& opt, const parallel::Comm& comm);

// `xanesd fit` once its command line is parsed (main.cpp): loads the config (or the defaults),
// fits, prints the summary; returns the process exit code.
int batch_command(const std::filesystem::path& config_file, const std::vector<std::string>& overrides, const BatchOptions& opt);

}  // namespace xanesd
