// The C++ tools' command lines (service/cli.hpp, CLI11), run as real binaries: --help exits 0,
// an unknown option or a bad number is one line on stderr naming the option, exit status 2;
// progress lines with an ETA (service/progress.hpp).
#include <doctest/doctest.h>

#include <fstream>

#include "process.hpp"
#include "progress.hpp"
#include "support.hpp"

using namespace xanesd;
using namespace xanesd::test;
namespace fs = std::filesystem;

namespace {

struct Run {
  int code = -1;
  std::string output;  // stdout and stderr
};

Run run(std::vector<std::string> argv, const std::string& name) {
  static const auto logs = scratch("cli-logs");
  const auto log = logs / (name + ".log");
  Process p(std::move(argv), log.string());
  const auto code = p.wait(std::chrono::seconds(20));
  REQUIRE(code.has_value());
  std::ifstream in(log);
  return {*code, std::string{std::istreambuf_iterator<char>(in), {}}};
}

// Exit status 2 and exactly one line that contains `text`.
void check_error(const Run& r, const std::string& text) {
  CHECK(r.code == 2);
  CHECK_MESSAGE(r.output.find(text) != std::string::npos, r.output);
  CHECK_MESSAGE(std::count(r.output.begin(), r.output.end(), '\n') == 1, r.output);
}

}  // namespace

TEST_CASE("every C++ tool: --help exits 0 and lists its options") {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{XANESD_BIN, "--help"}, "--config"},
      {{XANESD_BIN, "fit", "--help"}, "--refs"},
      {{XANESD_BIN, "keygen", "--help"}, "--out"},
      {{XANES_REPLAY_BIN, "--help"}, "--endpoint"},
      {{XANES_SIMULATE_BIN, "--help"}, "--energies"},
  };
  int n = 0;
  for (const auto& [argv, option] : cases) {
    const auto r = run(argv, "help" + std::to_string(n++));
    CHECK(r.code == 0);
    CHECK_MESSAGE(r.output.find(option) != std::string::npos, r.output);
  }
  const auto v = run({XANESD_BIN, "--version"}, "version");
  CHECK(v.code == 0);
  CHECK(v.output.rfind("xanesd 0.", 0) == 0);
}

TEST_CASE("an unknown option is named, one line, exit 2") {
  check_error(run({XANESD_BIN, "--config", "x.json", "--bogus"}, "unknown-xanesd"), "xanesd: The following argument was not expected: --bogus");
  check_error(run({XANESD_BIN, "fit", "--input", "a.h5", "--out", "b.h5", "--frobnicate"}, "unknown-fit"), "--frobnicate");
  check_error(run({XANES_REPLAY_BIN, "--input", "x.h5", "--bogus"}, "unknown-replay"), "xanes-replay: The following argument was not expected: --bogus");
  check_error(run({XANES_SIMULATE_BIN, "--refs", "r", "--energies", "e", "--out", "o", "--bogus"}, "unknown-simulate"), "--bogus");
}

TEST_CASE("a bad number names the option and the text, one line, exit 2 (not stod's message)") {
  check_error(run({XANES_REPLAY_BIN, "--input", "x.h5", "--rate", "fast"}, "bad-rate"), "xanes-replay: --rate: 'fast' is not a number");
  check_error(run({XANES_REPLAY_BIN, "--input", "x.h5", "--timeout", "0"}, "bad-timeout"), "--timeout: '0' is not above 0");
  check_error(run({XANES_REPLAY_BIN, "--input", "x.h5", "--rate", "1e999"}, "bad-inf"), "--rate: '1e999' is not a number");
  check_error(run({XANES_REPLAY_BIN, "--input", "x.h5", "--rows-per-frame", "2.5"}, "bad-rows"), "--rows-per-frame");
  check_error(run({XANES_REPLAY_BIN, "--input", "x.h5", "--energies", "7100,abc"}, "bad-energies"), "--energies: 'abc' is not a number");
  check_error(run({XANES_REPLAY_BIN, "--input", "x.h5", "--order", "sideways"}, "bad-order"), "--order");
  check_error(run({XANES_SIMULATE_BIN, "--refs", "r", "--energies", "e", "--out", "o", "--counts", "many"}, "bad-counts"),
              "xanes-simulate: --counts: 'many' is not a number");
  check_error(run({XANES_SIMULATE_BIN, "--refs", "r", "--energies", "e", "--out", "o", "--shape", "10by10"}, "bad-shape"), "--shape");
  check_error(run({XANESD_BIN, "fit", "--input", "a.h5"}, "missing-out"), "xanesd fit: --out is required");
  check_error(run({XANESD_BIN}, "missing-config"), "--config is required");
}

TEST_CASE("options keep their meaning: repeated --set and --refs, a comma list, a negative number") {
  // xanes-simulate with repeated --refs, a --use list and a negative --dark writes a scan file.
  const auto dir = scratch("cli-files");
  {
    std::ofstream e(dir / "energies.txt");
    for (int i = 0; i < 8; ++i) e << 7100 + 10 * i << "\n";
  }
  const auto lib = fe_library().string();
  const auto sim = run({XANES_SIMULATE_BIN, "--refs", lib, "--refs", lib, "--use", "Goethite,Magnetite", "--energies",
                        (dir / "energies.txt").string(), "--shape", "4x5", "--dark", "-1", "--out", (dir / "scan.h5").string()},
                       "simulate");
  CHECK_MESSAGE(sim.code == 0, sim.output);
  CHECK(sim.output.find("4×5 px, 8 energies") != std::string::npos);
  CHECK(sim.output.find("species: Goethite Magnetite") != std::string::npos);
  // A --set the config does not know is the config's error (exit 2), which proves each --set reached it.
  const auto fit = run({XANESD_BIN, "fit", "--quiet", "--input", (dir / "scan.h5").string(), "--out", (dir / "fit.h5").string(),
                        "--set", "log.level=warn", "--set", "no.such_key=1"},
                       "fit-set");
  CHECK(fit.code == 2);
  CHECK_MESSAGE(fit.output.find("no.such_key") != std::string::npos, fit.output);
  // Without --quiet `xanesd fit` says what it read and what it fits; with it, nothing on stderr.
  const auto loud = run({XANESD_BIN, "fit", "--input", (dir / "scan.h5").string(), "--out", (dir / "loud.h5").string(), "--refs", lib,
                         "--names", "Goethite,Magnetite", "--set", "log.level=warn"},
                        "fit-loud");
  CHECK_MESSAGE(loud.code == 0, loud.output);
  CHECK_MESSAGE(loud.output.find("xanesd fit: 8 frames read; final fit of 20 pixels") != std::string::npos, loud.output);
  CHECK_MESSAGE(loud.output.find("xanesd fit: wrote " + (dir / "loud.h5").string() + " in ") != std::string::npos, loud.output);
  const auto quiet = run({XANESD_BIN, "fit", "--quiet", "--input", (dir / "scan.h5").string(), "--out", (dir / "quiet.h5").string(),
                          "--refs", lib, "--names", "Goethite,Magnetite", "--set", "log.level=warn"},
                         "fit-quiet");
  CHECK_MESSAGE(quiet.code == 0, quiet.output);
  CHECK(quiet.output.find("xanesd fit:") == std::string::npos);
  CHECK(quiet.output.find("\"scan\"") != std::string::npos);  // the summary on stdout
}

TEST_CASE("progress lines: count, percentage, rate and ETA from the rate so far") {
  Progress p("xanesd fit", "frames", false);
  p.set_total(400);
  CHECK(p.line(100, 10) == "xanesd fit: 100/400 frames (25%), 10.0 frames/s, ETA 30 s");
  CHECK(p.line(0, 0) == "xanesd fit: 0/400 frames (0%), 0.0 frames/s, ETA unknown");
  CHECK(Progress::duration(200) == "3 min 20 s");
  CHECK(Progress::duration(7500) == "2 h 05 min");
  Progress unknown("xanes-replay", "frames sent", false);
  CHECK(unknown.line(50, 5) == "xanes-replay: 50 frames sent in 5 s, 10.0 frames sent/s");
}
