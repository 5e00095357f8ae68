// The command line of the C++ tools (xanesd, xanes-replay, xanes-simulate), all on CLI11:
// --help prints to stdout and exits 0; a bad option or value is one line on stderr that names
// it ("xanes-replay: Could not convert: --rate = fast (see --help)") and exit status 2.
#pragma once

#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>

namespace xanesd::cli {

// Returns the exit code when the program should stop here (help, version, a bad argument),
// nothing when it should go on: `if (auto code = cli::parse(app, argc, argv)) return *code;`
inline std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
    return std::nullopt;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string who = app.get_name();  // "xanesd fit" for an error in a subcommand's arguments
    for (const auto* sub : app.get_subcommands()) who += " " + sub->get_name();
    std::fprintf(stderr, "%s: %s (see --help)\n", who.c_str(), e.what());
    return 2;
  }
}

// A number option's check: a finite number, at least `min` (or above it when `above` is set).
// CLI11's own would take "1e400" as infinity; the message names the option and the text:
// "--rate: 'fast' is not a number", "--timeout: '0' is not above 0".
inline CLI::Validator number(double min = -std::numeric_limits<double>::max(), bool above = false) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        double v = 0;
        std::size_t used = 0;
        try {
          v = std::stod(text, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used == 0 || used != text.size() || !std::isfinite(v)) return "'" + text.substr(0, 64) + "' is not a number";
        if (above ? !(v > min) : !(v >= min)) {
          std::ostringstream bound;
          bound << min;
          return "'" + text + "' is not " + (above ? "above " : "at least ") + bound.str();
        }
        return "";
      },
      "");
}
inline CLI::Validator non_negative() { return number(0); }
inline CLI::Validator positive() { return number(0, true); }

}  // namespace xanesd::cli
