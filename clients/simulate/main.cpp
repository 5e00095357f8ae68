// xanes-simulate: writes a synthetic scan file (with /truth) from real reference spectra.
#include <cstdio>
#include <iostream>
#include <sstream>

#include "cli_numbers.hpp"
#include "simulate/simulate.hpp"

using namespace xanesd;

static int usage(int code = 2) {
  std::fprintf(code ? stderr : stdout,
               "usage: xanes-simulate --refs FILE [--refs FILE ...] [--use NAME,NAME,...] --energies FILE\n"
               "                      [--shape ROWSxCOLS] [--mode fluorescence|transmission] [--counts N]\n"
               "                      [--thickness T] [--dark D] [--seed S] [--no-noise] [--layout regions|domains|scene]\n"
               "                      [--background B] [--i0-units U] [--gain G]\n"
               "                      --out SCAN.h5\n");
  return code;
}

int main(int argc, char** argv) {
  std::vector<std::string> ref_files;
  std::string use, energies_file, out;
  sim::Params p;
  p.rows = 155, p.cols = 160;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
        return argv[++i];
      };
      if (a == "-h" || a == "--help") return usage(0);
      if (a == "--refs") ref_files.push_back(next());
      else if (a == "--use") use = next();
      else if (a == "--energies") energies_file = next();
      else if (a == "--shape") {
        const auto v = next();
        const auto x = v.find('x');
        if (x == std::string::npos) throw std::invalid_argument("--shape is ROWSxCOLS");
        p.rows = static_cast<int>(cli::whole(a, v.substr(0, x), 1, 1 << 16)), p.cols = static_cast<int>(cli::whole(a, v.substr(x + 1), 1, 1 << 16));
      } else if (a == "--mode") p.mode = protocol::mode_from_string(next());
      else if (a == "--counts") p.counts = cli::number(a, next());
      else if (a == "--thickness") p.max_thickness = cli::number(a, next());
      else if (a == "--dark") p.dark = cli::number(a, next());
      else if (a == "--seed") p.seed = static_cast<std::uint64_t>(cli::whole(a, next(), 0, 1LL << 53));
      else if (a == "--no-noise") p.noise = false;
      else if (a == "--layout") {
        const std::string l = next();
        if (l == "regions") p.layout = sim::Params::Layout::regions;
        else if (l == "domains") p.layout = sim::Params::Layout::domains;
        else if (l == "scene") p.layout = sim::Params::Layout::scene;
        else throw std::invalid_argument("--layout is 'regions', 'domains' or 'scene'");
      }
      else if (a == "--background") p.background = cli::number(a, next());
      else if (a == "--i0-units") p.i0_units = cli::number(a, next());
      else if (a == "--gain") p.detector_gain = cli::number(a, next());
      else if (a == "--out") out = next();
      else {
        std::fprintf(stderr, "xanes-simulate: unknown option '%s'\n", a.c_str());
        return usage();
      }
    }
    if (ref_files.empty() || energies_file.empty() || out.empty()) return usage();
    std::vector<science::Reference> all, refs;
    for (const auto& f : ref_files) {
      auto r = science::load_reference_file(f);
      all.insert(all.end(), r.begin(), r.end());
    }
    if (use.empty()) {
      refs.assign(all.begin(), all.begin() + std::min<std::size_t>(3, all.size()));
    } else {
      std::stringstream ss(use);
      std::string name;
      while (std::getline(ss, name, ',')) {
        auto it = std::find_if(all.begin(), all.end(), [&](const auto& r) { return r.name == name; });
        if (it == all.end()) throw std::invalid_argument("no reference named '" + name + "'");
        refs.push_back(*it);
      }
    }
    p.energies_eV = sim::read_energies_file(energies_file);
    const auto scan = sim::simulate(refs, p);
    sim::write_scan_file(scan, out);
    std::printf("wrote %s: %d×%d px, %zu energies, %s, species:", out.c_str(), p.rows, p.cols, p.energies_eV.size(),
                protocol::to_string(p.mode).c_str());
    for (const auto& n : scan.reference_names) std::printf(" %s", n.c_str());
    std::printf("\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xanes-simulate: %s\n", e.what());
    return 1;
  }
}
