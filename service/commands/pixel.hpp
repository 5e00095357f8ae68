// The `pixel` control command (PROTOCOL.md): one pixel of the current or last scan, for a
// dashboard's inspector: its measured spectrum, the fitted model and each reference's part of
// it, and the pixel's values in the maps (the same numbers as the maps and the result file).
#pragma once

#include <cstdint>

#include <nlohmann/json.hpp>

#include "scan/scan.hpp"
#include "xanesd/protocol/control.hpp"

namespace xanesd {

// scan may be nullptr. `version`: the publication cycle the maps come from. Returns
// {"ok": false, "code": "invalid_pixel", …} for coordinates that are not a pixel of the scan.
nlohmann::json pixel_request(const protocol::PixelArgs& request, const Scan* scan, std::int64_t version);

}  // namespace xanesd
