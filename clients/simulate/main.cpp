// xanes-simulate: writes a synthetic scan file (with /truth) from real reference spectra.
#include <cstdio>
#include <iostream>

#include "cli.hpp"
#include "simulate/simulate.hpp"

using namespace xanesd;

int main(int argc, char** argv) {
  CLI::App app("Writes a synthetic scan file (with /truth) from real reference spectra.", "xanes-simulate");
  std::vector<std::string> ref_files, use;
  std::string energies_file, out, shape = "155x160", mode = "fluorescence", layout = "regions";
  sim::Params p;
  app.add_option("--refs", ref_files, "reference file (repeatable)")->required()->allow_extra_args(false);
  app.add_option("--use", use, "the species: NAME,NAME,... (default: the first 3 references)")->delimiter(',');
  app.add_option("--energies", energies_file, "text file of energies (eV)")->required();
  // ROWSxCOLS, each 1 to 65536
  const CLI::Validator shape_check(
      [](std::string& v) -> std::string {
        const auto x = v.find('x');
        auto side = [](const std::string& t) {
          return !t.empty() && t.size() <= 5 && t.find_first_not_of("0123456789") == std::string::npos && std::stoi(t) >= 1 &&
                 std::stoi(t) <= 65536;
        };
        return x != std::string::npos && side(v.substr(0, x)) && side(v.substr(x + 1)) ? "" : "'" + v + "' is not ROWSxCOLS (each 1 to 65536)";
      },
      "ROWSxCOLS");
  app.add_option("--shape", shape, "image size")->check(shape_check)->capture_default_str();
  app.add_option("--mode", mode, "measurement mode")->check(CLI::IsMember({"fluorescence", "transmission"}))->capture_default_str();
  app.add_option("--counts", p.counts, "counts scale")->check(cli::number())->capture_default_str();
  app.add_option("--thickness", p.max_thickness, "maximum thickness")->check(cli::number())->capture_default_str();
  app.add_option("--dark", p.dark, "dark counts")->check(cli::number())->capture_default_str();
  app.add_option("--seed", p.seed, "random seed")->check(cli::non_negative())->capture_default_str();
  app.add_flag("--no-noise", [&](std::int64_t) { p.noise = false; }, "no counting noise");
  app.add_option("--layout", layout, "species layout")->check(CLI::IsMember({"regions", "domains", "scene"}))->capture_default_str();
  app.add_option("--background", p.background, "background counts")->check(cli::number())->capture_default_str();
  app.add_option("--i0-units", p.i0_units, "I0 scale")->check(cli::number())->capture_default_str();
  app.add_option("--gain", p.detector_gain, "detector gain")->check(cli::number())->capture_default_str();
  app.add_option("--slices", p.slices, "write a volume E×Z×Y×X: the image cut into Z slices of rows/Z rows")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  app.add_option("--out", out, "the scan file to write")->required();
  if (auto code = cli::parse(app, argc, argv)) return *code;
  const auto x = shape.find('x');
  p.rows = std::stoi(shape.substr(0, x)), p.cols = std::stoi(shape.substr(x + 1));
  p.mode = protocol::mode_from_string(mode);
  p.layout = layout == "scene" ? sim::Params::Layout::scene : layout == "domains" ? sim::Params::Layout::domains : sim::Params::Layout::regions;
  try {
    std::vector<science::Reference> all, refs;
    for (const auto& f : ref_files) {
      auto r = science::load_reference_file(f);
      all.insert(all.end(), r.begin(), r.end());
    }
    if (use.empty()) {
      refs.assign(all.begin(), all.begin() + std::min<std::size_t>(3, all.size()));
    } else {
      for (const auto& name : use) {
        auto it = std::find_if(all.begin(), all.end(), [&](const auto& r) { return r.name == name; });
        if (it == all.end()) throw std::invalid_argument("no reference named '" + name + "'");
        refs.push_back(*it);
      }
    }
    if (p.rows % p.slices != 0) throw std::invalid_argument("--slices must divide the image's rows (--shape)");
    p.energies_eV = sim::read_energies_file(energies_file);
    const auto scan = sim::simulate(refs, p);
    sim::write_scan_file(scan, out);
    if (p.slices > 1) std::printf("wrote %s: %d×%d×%d voxels", out.c_str(), p.slices, p.rows / p.slices, p.cols);
    else std::printf("wrote %s: %d×%d px", out.c_str(), p.rows, p.cols);
    std::printf(", %zu energies, %s, species:", p.energies_eV.size(), protocol::to_string(p.mode).c_str());
    for (const auto& n : scan.reference_names) std::printf(" %s", n.c_str());
    std::printf("\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xanes-simulate: %s\n", e.what());
    return 1;
  }
}
