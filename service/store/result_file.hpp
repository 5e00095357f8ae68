// The NeXus-style result file (README "Result file"): one function per group, written by the
// pipeline thread only.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "parallel/comm.hpp"
#include "scan/scan.hpp"

namespace xanesd {

// Why `name` cannot be used as one component of a path the daemon writes (scan ids, XRF
// channels, save paths), or empty: 1–128 characters of [A-Za-z0-9._-], not starting with '.'.
// So no separators, no "..", no control characters, nothing but ASCII (hence valid UTF-8).
std::string path_name_error(std::string_view name);

// Where `save` may write: `requested` (empty: <scan_id>.h5) relative to `directory`, every
// component a valid name, and still inside `directory` once symlinks are resolved. Throws
// std::invalid_argument saying why not.
std::filesystem::path result_path(const std::filesystem::path& directory, const std::string& requested,
                                  const std::string& scan_id);

// Why `directory` cannot take result files (created if missing, a probe file written), or empty.
std::string output_directory_error(const std::filesystem::path& directory);

// Writes <path> atomically (to a temporary name, then renamed) so readers never see half a
// file; a failed write removes its temporary file. An existing file is replaced only if it is
// HDF5 (an earlier result), never anything else.
void write_result_file(const std::filesystem::path& path, const Scan& scan, const nlohmann::json& config,
                       const nlohmann::json& counters, bool save_spectra);
// The same file written by every rank of an MPI job (README "MPI"), called by every rank with
// `block`, its row block's scan: rank 0 writes what is the image's (its description, references,
// clusters, every dataset's shape) from `image`, the whole image's scan (only its image-level
// state is read: Scan::assemble; null on the other ranks; config and counters are rank 0's), then
// every rank writes its own rows of the per-pixel datasets. In one process `image` is `block`.
void write_result_file(const std::filesystem::path& path, const Scan* image, const Scan& block, const nlohmann::json& config,
                       const nlohmann::json& counters, bool save_spectra, const parallel::Comm& comm);

// True if `path` is a result file of scan `scan_id` written while it was still running (a
// partial result, e.g. saved when the daemon was stopped by a signal). Never throws.
bool is_partial_result(const std::filesystem::path& path, const std::string& scan_id);

}  // namespace xanesd
