// The reference readers: any file → load_reference_file (XDI/Athena multi-column, two-column
// eV or keV, headers) under each normalize mode and energy unit, then resample onto a scan grid.
// The first input byte picks the mode and unit; the rest is the file. Documented outcome for bad
// input: science::ReferenceError.
#include "fuzz_support.hpp"
#include "science/references.hpp"

using namespace xanesd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  static const science::NormalizeMode modes[] = {science::NormalizeMode::automatic, science::NormalizeMode::always,
                                                 science::NormalizeMode::never};
  static const science::EnergyUnit units[] = {science::EnergyUnit::automatic, science::EnergyUnit::eV,
                                              science::EnergyUnit::keV};
  const auto mode = modes[data[0] % 3];
  const auto unit = units[(data[0] / 3) % 3];
  static const auto file = fuzz::scratch_file("reference.txt");
  fuzz::write_file(file, data + 1, size - 1);
  std::vector<science::Reference> refs;
  try {
    refs = science::load_reference_file(file, mode, unit);
  } catch (const science::ReferenceError&) {
    return 0;
  } catch (const std::exception& e) {
    fuzz::fail_unexpected(e, "load_reference_file");
  }
  for (const auto& r : refs) {
    if (r.energies_eV.size() != r.mu.size() || r.energies_eV.empty()) fuzz::fail("a loaded reference has mismatched or no points");
    for (std::size_t i = 1; i < r.energies_eV.size(); ++i)
      if (!(r.energies_eV[i] > r.energies_eV[i - 1])) fuzz::fail("a loaded reference's energies are not strictly increasing");
  }
  // Onto the loaded range (a scan over these references) and onto the Fe K edge.
  std::vector<double> grid;
  const double lo = refs.front().energies_eV.front(), hi = refs.front().energies_eV.back();
  for (int i = 0; i < 16; ++i) grid.push_back(lo + (hi - lo) * i / 15.0);
  for (const auto& g : {grid, std::vector<double>{7100, 7110, 7120, 7130, 7140}}) {
    try {
      (void)science::resample(refs, g, 20.0);
    } catch (const science::ReferenceError&) {
    } catch (const std::exception& e) {
      fuzz::fail_unexpected(e, "resample");
    }
  }
  return 0;
}
