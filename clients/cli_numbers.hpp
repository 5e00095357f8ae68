// Numbers from the command line of the C++ clients: a bad one is an error that names the
// option and the text ("--rate: 'fast' is not a number"), not std::stod's "stod".
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>

namespace xanesd::cli {

inline double number(const std::string& option, const std::string& text) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !std::isfinite(v))
    throw std::invalid_argument(option + ": '" + text.substr(0, 64) + "' is not a number");
  return v;
}

inline long long whole(const std::string& option, const std::string& text, long long min = 0, long long max = 1'000'000'000) {
  const double v = number(option, text);
  if (v != std::floor(v) || v < static_cast<double>(min) || v > static_cast<double>(max))
    throw std::invalid_argument(option + ": '" + text.substr(0, 64) + "' is not a whole number from " + std::to_string(min) +
                                " to " + std::to_string(max));
  return static_cast<long long>(v);
}

}  // namespace xanesd::cli
