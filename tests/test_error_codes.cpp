// The contract's error codes (issue 12 item 6): every code the C++ can put on the `errors`
// topic or in a control reply's `code` is in the table of protocol/PROTOCOL.md ("Error codes"),
// and every code in the table is one the C++ emits. The codes are found in the sources where
// an issue is made: Issue{"code", …}, report({"code", …}), issues.push_back({"code", …}),
// guarded("code", …), flag(n, "code", …), {"code", "…"} in a reply, and the code argument of
// the control server's error_reply / fail.
#include <doctest/doctest.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "support.hpp"

namespace {

std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The top-level arguments of the call whose '(' is at `open`, as source text; string literals
// and nested brackets are skipped over.
std::vector<std::string> call_arguments(const std::string& src, std::size_t open) {
  std::vector<std::string> args(1);
  int depth = 0;
  for (std::size_t i = open; i < src.size(); ++i) {
    const char c = src[i];
    if (c == '"') {  // a string literal, escapes included
      const std::size_t start = i;
      for (++i; i < src.size() && src[i] != '"'; ++i)
        if (src[i] == '\\') ++i;
      args.back() += src.substr(start, i - start + 1);
      continue;
    }
    if (c == '(' || c == '{' || c == '[') {
      if (depth++ == 0) continue;
    } else if (c == ')' || c == '}' || c == ']') {
      if (--depth == 0) break;
    } else if (c == ',' && depth == 1) {
      args.emplace_back();
      continue;
    }
    args.back() += c;
  }
  return args;
}

// Every issue code the sources under `dir` emit, with the file that emits it.
std::map<std::string, std::string> emitted_codes(const std::filesystem::path& dir) {
  static const std::regex direct(
      R"re((?:Issue\{|report_?\(\{|push_back\(\{|guarded(?:_for)?\(|flag\([^,()]+,\s*|"code",\s*)"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)")re");
  static const std::regex reply_call(R"re(\b(?:error_reply|fail)\()re");
  static const std::regex literal_code(R"re(^\s*"([a-z][a-z0-9]*(?:_[a-z0-9]+)+)"\s*$)re");
  std::map<std::string, std::string> codes;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir)) {
    const auto ext = entry.path().extension();
    if (ext != ".cpp" && ext != ".hpp") continue;
    const auto src = read_text(entry.path());
    const auto name = entry.path().filename().string();
    for (std::sregex_iterator m(src.begin(), src.end(), direct), end; m != end; ++m) codes.emplace((*m)[1], name);
    for (std::sregex_iterator m(src.begin(), src.end(), reply_call), end; m != end; ++m) {
      const auto args = call_arguments(src, static_cast<std::size_t>(m->position() + m->length() - 1));
      std::smatch code;
      if (args.size() >= 2 && std::regex_match(args[1], code, literal_code)) codes.emplace(code[1], name);
    }
  }
  return codes;
}

// The codes in the first column of PROTOCOL.md's "Error codes" table.
std::set<std::string> tabled_codes() {
  std::istringstream doc(read_text(xanesd::test::source_dir() / "protocol" / "PROTOCOL.md"));
  static const std::regex quoted("`([a-z0-9_]+)`");
  std::set<std::string> codes;
  bool in_section = false;
  for (std::string line; std::getline(doc, line);) {
    if (line.rfind("## ", 0) == 0) in_section = line == "## Error codes";
    if (!in_section || line.rfind("| `", 0) != 0) continue;
    const auto first_cell = line.substr(1, line.find('|', 1) - 1);
    for (std::sregex_iterator m(first_cell.begin(), first_cell.end(), quoted), end; m != end; ++m) codes.insert((*m)[1]);
  }
  return codes;
}

}  // namespace

TEST_CASE("every error code the daemon emits is in PROTOCOL.md's table, and every tabled code is emitted") {
  const auto emitted = emitted_codes(xanesd::test::source_dir() / "service");
  const auto tabled = tabled_codes();
  // The scanner must see the codes of every kind of call site, or this test proves nothing.
  for (const char* known : {"malformed_message", "duplicate_seq", "nonfinite_samples", "missing_seq", "publish_failed",
                            "late_reply", "not_authorized", "invalid_path", "bad_control_request", "scan_interrupted"})
    CHECK_MESSAGE(emitted.count(known) == 1, known << " not found in the sources: the scanner is broken");
  CHECK(tabled.size() >= 30);
  for (const auto& emitted_code : emitted)  // no structured binding: the message captures it (clang 14)
    CHECK_MESSAGE(tabled.count(emitted_code.first) == 1,
                  emitted_code.first << " (" << emitted_code.second << ") is not in PROTOCOL.md's error table");
  for (const auto& code : tabled) CHECK_MESSAGE(emitted.count(code) == 1, code << " is tabled in PROTOCOL.md but no source emits it");
  MESSAGE(emitted.size() << " codes emitted, " << tabled.size() << " tabled");
}
