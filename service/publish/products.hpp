// The messages one publication cycle sends (PROTOCOL.md "Results"): the typed products of
// xanesd/protocol/products.hpp, filled from the scan's current maps and copied into frames so
// the pipeline can go on updating the originals.
#pragma once

#include <vector>

#include "scan/scan.hpp"
#include "xanesd/protocol/products.hpp"

namespace xanesd {

// with_segments: include maps/segments and clusters (the cycles that refreshed them). `at`:
// the ingest progress the maps were computed from (a cycle on another thread takes it at its
// start); the scan's own when null. with_fit = false: without the fit's maps (fractions,
// thickness, residual, edge, nenergies), for a cycle that published them already.
std::vector<protocol::WireMessage> make_map_messages(const Scan& scan, std::int64_t version, bool final,
                                                     bool with_segments = true, const ScanProgress* at = nullptr,
                                                     bool with_fit = true);
protocol::WireMessage make_status_message(const nlohmann::json& status, const std::string& scan_id, std::int64_t version);
// An energy selection (the select_energies reply) for the scan controller, on `energies`.
protocol::WireMessage make_energies_message(const nlohmann::json& selection, std::int64_t version);
protocol::WireMessage make_error_message(const std::string& scan_id, const std::string& code, const std::string& message,
                                         std::int64_t count, std::int64_t version);

}  // namespace xanesd
