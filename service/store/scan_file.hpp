// Reads a scan file (README "Scan files") and turns it into the messages a detector and scan
// controller would send: start, frames in the chosen order, stop. The replayer sends them over
// ZeroMQ; the batch fit (`xanesd fit`) applies them directly. One reader, so both see the same scan.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <hdf5.h>

#include "xanesd/protocol/messages.hpp"

namespace xanesd {

struct ScanFileOptions {
  protocol::Order order = protocol::Order::energy_major;
  int rows_per_frame = 0;  // energy-major: 0 = whole image per frame
  int chunk_pixels = 0;    // pixel-major: pixels per frame (0 = one image row)
  bool spectra = false;    // pixel-major: each chunk's every energy in one message (a spectra batch)
  std::string scan_id;     // default: the file's stem
  bool include_stop = true;
  // A sub-spectra scan: measure only the file's energies nearest these (eV, each within 1 eV;
  // a scan controller replaying a selected list). Empty: every energy of the file.
  std::vector<double> only_energies_eV;
  // Energy-major: each frame's arrays point into plane buffers that are read into again for
  // the next frame (no allocation, page faults or copy per frame). Only for a consumer that is
  // done with a frame when emit returns (the batch fit), not for one that queues it (a sender).
  bool borrow_buffers = false;
  // Energy-major: only image rows [row_begin, row_end) (row_end < 0: to the last), as a scan of
  // that many rows (start, dark, flat, XRF and frames cut to them): an MPI rank's block of the
  // image (service/parallel). The planes' rows are read with hyperslab selections using these
  // HDF5 property lists (MPI-IO file access, collective transfer; default: serial).
  int row_begin = 0, row_end = -1;
  hid_t file_access = H5P_DEFAULT, transfer = H5P_DEFAULT;
};

// The image a scan file's /raw/counts holds, without reading it: E × rows × cols, or a volume
// E × Z × Y × X read as an image of Z·Y rows (slice_rows = Y; 0 for an image).
struct ScanImage {
  int rows = 0, cols = 0, slice_rows = 0;
};
ScanImage scan_file_image(const std::filesystem::path& path, hid_t file_access = H5P_DEFAULT);

// How many frames read_scan_file emits for the scan its start message describes (progress, ETA).
std::int64_t scan_file_frames(const protocol::StartMsg& start, const ScanFileOptions& opt);

// Calls `emit` for every message in order; returns how many frames were emitted.
std::int64_t read_scan_file(const std::filesystem::path& path, const ScanFileOptions& opt,
                            const std::function<void(protocol::IngestMessage&&)>& emit);

}  // namespace xanesd
