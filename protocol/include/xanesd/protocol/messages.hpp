// Typed ingest messages (start, frame, stop): one struct per message of PROTOCOL.md, used by
// the service and the C++ clients. to_wire/from_wire are the only place their fields are named.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "xanesd/protocol/wire.hpp"

namespace xanesd::protocol {

// Wire limits: every integer a message carries is range-checked against these before use.
inline constexpr std::int64_t kMaxPixels = std::int64_t{1} << 26;  // rows·cols of a scan
inline constexpr std::int64_t kMaxEnergies = 4096;                 // planned energies of a scan
inline constexpr std::int64_t kMaxSeq = std::int64_t{1} << 53;     // exact as a double (Python, JSON)

enum class Mode { fluorescence, transmission };
enum class Order { energy_major, pixel_major };
std::string to_string(Mode m);
std::string to_string(Order o);
Mode mode_from_string(const std::string& s);
Order order_from_string(const std::string& s);

struct StartMsg {
  std::string scan_id;
  int rows = 0, cols = 0;
  std::vector<double> energies_eV;
  Mode mode = Mode::fluorescence;
  Order order = Order::energy_major;
  std::vector<std::string> xrf_channels;
  bool extend = false;        // append energies_eV to the plan of scan scan_id (running or stopped)
  // The scan's references: names of loaded (or start-up library) spectra, or reference files
  // the daemon can read; empty: the references loaded now.
  std::vector<std::string> references;
  // What the scan controller knows of the run (e.g. a Bluesky run's uid, a proposal, a sample):
  // a JSON object kept in the result file; `run_id` or `uid` identify the run.
  nlohmann::json metadata = nlohmann::json::object();
  std::optional<Array> dark;  // rows×cols
  std::optional<Array> flat;  // rows×cols, energy independent

  WireMessage to_wire() &&;
  static StartMsg from_wire(WireMessage&& m);
};

struct Region {
  enum class Kind { full, rows, pixels } kind = Kind::full;
  int row0 = 0, nrows = 0;  // for Kind::rows
};

struct FrameMsg {
  std::string scan_id;
  std::int64_t seq = 0;
  int energy_index = 0;
  double energy_eV = 0;
  Region region;
  std::optional<double> i0_scalar;
  Array counts;
  std::optional<Array> i0, dark, flat, pixels, xrf;
  // A spectra batch (region kind `pixels`, PROTOCOL.md): several energies of the same pixels in
  // one message, as a pixel-major scan measures them. counts (and the i0, dark, flat arrays) are
  // N × E', one spectrum per row; xrf is C × N. energy_index and energy_eV are the first energy's.
  // Empty: a frame at one energy.
  std::vector<int> energy_indices;
  std::vector<double> energies_eV;
  std::vector<double> i0_scalars;  // the header's `i0` as a list, one per energy (else i0_scalar)

  bool spectra() const { return !energy_indices.empty(); }
  // The frames at one energy a spectra batch holds, in its energy order (each with the batch's
  // seq; the XRF in the first): what a batch means (the service stores it as these frames in
  // turn would be stored). Copies the samples (a column each); the pixel list and XRF are views
  // of this batch's, valid while it lives.
  std::vector<FrameMsg> per_energy() const;

  WireMessage to_wire() &&;
  static FrameMsg from_wire(WireMessage&& m);
};

struct StopMsg {
  std::string scan_id;
  std::string reason = "completed";
  std::optional<std::int64_t> frames_sent;

  WireMessage to_wire() &&;
  static StopMsg from_wire(WireMessage&& m);
};

// Any message of the ingest socket.
using IngestMessage = std::variant<StartMsg, FrameMsg, StopMsg>;

}  // namespace xanesd::protocol
