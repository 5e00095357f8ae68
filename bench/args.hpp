// Command-line plumbing shared by the bench programs: walking argv, comma lists, and main()'s
// error handling (a message naming the program, exit status 1).
#pragma once

#include <cstdio>
#include <exception>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace xanesd::bench {

// while (args.next()) { if (args.option() == "--out") o.out = args.value(); … else args.unknown(); }
class Args {
 public:
  Args(int argc, char** argv) : argc_(argc), argv_(argv) {}
  bool next() {
    if (++i_ >= argc_) return false;
    option_ = argv_[i_];
    return true;
  }
  const std::string& option() const { return option_; }
  std::string value() {
    if (i_ + 1 >= argc_) throw std::runtime_error("option " + option_ + " needs a value");
    return argv_[++i_];
  }
  [[noreturn]] void unknown() const { throw std::runtime_error("unknown option '" + option_ + "'"); }

 private:
  int argc_, i_ = 0;
  char** argv_;
  std::string option_;
};

// "a,b,c" → numbers; throws on an empty list or a word that is not a number.
inline std::vector<double> parse_numbers(const std::string& s) {
  std::vector<double> v;
  std::stringstream in(s);
  for (std::string t; std::getline(in, t, ',');) v.push_back(std::stod(t));
  if (v.empty()) throw std::runtime_error("empty list '" + s + "'");
  return v;
}

inline std::vector<int> parse_ints(const std::string& s) {
  std::vector<int> v;
  for (double x : parse_numbers(s)) v.push_back(static_cast<int>(x));
  return v;
}

// Runs a bench's main body with line-buffered stdout (progress through tee); an exception is
// printed as "name: what" and gives exit status 1.
inline int run_main(const char* name, const std::function<int()>& body) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    return body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 1;
  }
}

}  // namespace xanesd::bench
