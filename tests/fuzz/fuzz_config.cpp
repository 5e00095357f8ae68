// The config parser: a config file (load_config: JSON with comments, nested or dotted keys,
// range checks) plus --set overrides, and the control `configure` changes (reconfigure).
// Input: the file's text, optionally followed by "\n--set\n" and one key=value per line.
// Documented outcome for bad input: ConfigError.
#include "config/config.hpp"
#include "fuzz_support.hpp"

using namespace xanesd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto cut = text.find("\n--set\n");
  std::vector<std::string> overrides;
  if (cut != std::string_view::npos) {
    auto rest = text.substr(cut + 7);
    while (!rest.empty() && overrides.size() < 32) {
      const auto nl = rest.find('\n');
      overrides.emplace_back(rest.substr(0, nl));
      rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
    }
  }
  static const auto file = fuzz::scratch_file("config.json");
  fuzz::write_file(file, data, cut == std::string_view::npos ? size : cut);
  try {
    (void)load_config(file, overrides);
  } catch (const ConfigError&) {
  } catch (const std::exception& e) {
    fuzz::fail_unexpected(e, "load_config");
  }
  // The same text as a `configure` request's "set" object, on the shipped defaults.
  static const auto defaults = make_config(nlohmann::json::object(), {}, "/");
  const auto changes = nlohmann::json::parse(text.substr(0, cut), nullptr, /*allow_exceptions=*/false);
  if (changes.is_discarded()) return 0;
  try {
    (void)reconfigure(defaults, changes);
  } catch (const ConfigError&) {
  } catch (const std::exception& e) {
    fuzz::fail_unexpected(e, "reconfigure");
  }
  return 0;
}
