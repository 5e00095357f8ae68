// Typed result publications (PROTOCOL.md "Results"): one struct per topic of the PUB socket,
// built by the daemon and parsed by C++ subscribers. to_wire/from_wire are the only place their
// header keys and array names are spelled; from_wire checks every key's type and every array's
// dtype and shape against the header (K references × rows × cols …), so a subscriber that
// parses a product can index its arrays without further checks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "xanesd/protocol/messages.hpp"  // the wire limits (kMaxPixels …)

namespace xanesd::protocol {

// The keys every maps/*, clusters and references publication carries: which scan, which
// publication cycle, and the ingest progress the maps were computed from.
struct MapHeader {
  std::string scan_id;
  std::int64_t version = 0;   // the publication cycle (all products of a cycle share it)
  double time_unix = 0;
  int rows = 0, cols = 0;
  std::int64_t frames_applied = 0, last_seq = -1;
  int energies_measured = 0;
  bool final = false;         // the publication made at stop
};

struct FractionsProduct {  // maps/fractions
  MapHeader map;
  std::vector<std::string> reference_names;  // K
  std::string fit_method;
  double mask_thickness_threshold = 0;
  std::int64_t mask_valid_pixels = 0;
  Array fractions, fraction_sigma;  // float32 K×rows×cols
  Array mask;                       // uint8 rows×cols
  std::optional<Array> spatial_neighbours;  // float32 rows×cols, with fit.spatial

  WireMessage to_wire() &&;
  static FractionsProduct from_wire(WireMessage&& m);
};

struct ThicknessProduct {  // maps/thickness
  MapHeader map;
  Array thickness;  // float32 rows×cols
  WireMessage to_wire() &&;
  static ThicknessProduct from_wire(WireMessage&& m);
};

struct ResidualProduct {  // maps/residual
  MapHeader map;
  Array residual, rfactor;  // float32 rows×cols
  WireMessage to_wire() &&;
  static ResidualProduct from_wire(WireMessage&& m);
};

struct EdgeProduct {  // maps/edge
  MapHeader map;
  double e0_scan_eV = 0;
  std::int64_t pixels_computed = 0;
  Array e0, half_step, white_line, edge_step;  // float32 rows×cols
  WireMessage to_wire() &&;
  static EdgeProduct from_wire(WireMessage&& m);
};

struct NenergiesProduct {  // maps/nenergies
  MapHeader map;
  Array nenergies;  // uint16 rows×cols
  WireMessage to_wire() &&;
  static NenergiesProduct from_wire(WireMessage&& m);
};

struct SegmentsProduct {  // maps/segments
  MapHeader map;
  std::string waiting;  // non-empty: nothing to segment yet (why), and no array
  std::vector<std::int64_t> cluster_ids;
  std::int64_t labelled_pixels = 0;
  double silhouette = 0;
  std::optional<Array> segments;  // uint8 rows×cols, when not waiting
  WireMessage to_wire() &&;
  static SegmentsProduct from_wire(WireMessage&& m);
};

struct ClustersProduct {  // clusters: one entry per cluster in every list, k in all
  MapHeader map;
  std::vector<std::int64_t> cluster_ids, pixels, unexplained;
  std::vector<std::vector<double>> fractions, fraction_sigma;  // k lists of K
  std::vector<double> thickness, residual, noise;
  std::vector<std::string> reference_names;  // K
  nlohmann::json pca = nlohmann::json::object();  // PCA diagnostics (PROTOCOL.md lists its keys)
  Array mean_spectra, stderr_spectra;  // float64 k×E
  WireMessage to_wire() &&;
  static ClustersProduct from_wire(WireMessage&& m);
};

struct ReferencesProduct {  // references: the image-level reference selection
  MapHeader map;
  std::vector<std::string> selected;
  nlohmann::json selection = nlohmann::json::object();  // the other keys of PROTOCOL.md's table
  WireMessage to_wire() &&;
  static ReferencesProduct from_wire(WireMessage&& m);
};

struct StatusProduct {  // status (also the control reply to `status`, with counters)
  std::string scan_id;
  std::int64_t version = 0;
  double time_unix = 0;
  std::string state;  // idle, running, stopped, aborted
  nlohmann::json details = nlohmann::json::object();  // scan, references, result_file, queues, journal, recovery
  WireMessage to_wire() &&;
  static StatusProduct from_wire(WireMessage&& m);
};

struct EnergiesProduct {  // energies: an energy selection for the scan controller
  std::string scan_id;
  std::int64_t version = 0;  // selections since the daemon started
  double time_unix = 0;
  std::vector<double> energies_eV;  // sorted; carried as a float64 array
  nlohmann::json selection = nlohmann::json::object();  // the select_energies reply's other keys
  WireMessage to_wire() &&;
  static EnergiesProduct from_wire(WireMessage&& m);
};

struct ErrorProduct {  // errors: one rejected or flagged input, or a failure
  std::string scan_id, code, message;
  std::int64_t count = 0;    // occurrences of this code in the scan
  std::int64_t version = 0;  // error messages since the daemon started
  double time_unix = 0;
  WireMessage to_wire() &&;
  static ErrorProduct from_wire(WireMessage&& m);
};

using Product = std::variant<FractionsProduct, ThicknessProduct, ResidualProduct, EdgeProduct, NenergiesProduct,
                             SegmentsProduct, ClustersProduct, ReferencesProduct, StatusProduct, EnergiesProduct,
                             ErrorProduct>;

// Parses any publication by its topic; throws ProtocolError for an unknown topic or a product
// that breaks its contract.
Product parse_product(WireMessage&& m);
// The topics parse_product knows, in PROTOCOL.md's order.
const std::vector<std::string>& product_topics();

}  // namespace xanesd::protocol
