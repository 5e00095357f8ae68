// The NeXus-style result file (README "Result file"): one function per group, written by the
// pipeline thread only.
#pragma once

#include <filesystem>

#include <nlohmann/json.hpp>

#include "scan/scan.hpp"

namespace xanesd {

// Writes <path> atomically (to a temporary name, then renamed) so readers never see half a file.
void write_result_file(const std::filesystem::path& path, const Scan& scan, const nlohmann::json& config,
                       const nlohmann::json& counters, bool save_spectra);

}  // namespace xanesd
