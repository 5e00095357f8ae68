// Configuration: defaults, overrides, and errors that name the key.
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>

#include "config/config.hpp"
#include "support.hpp"

using namespace xanesd;

TEST_CASE("the shipped default config loads and resolves reference paths next to it") {
  const auto cfg = load_config(test::source_dir() / "config" / "default.json", {});
  CHECK(cfg.fit.method == "nnls");
  REQUIRE(cfg.references.files.size() == 1);
  CHECK(std::filesystem::exists(cfg.references.files[0]));
  CHECK(cfg.effective.at("publish.interval_ms") == 250);
}

TEST_CASE("--set overrides, with JSON or bare-string values") {
  const auto cfg = make_config(nlohmann::json::object(),
                               {"fit.method=least_squares", "publish.interval_ms=0", "references.files=[\"a.nor\"]"}, "/x");
  CHECK(cfg.fit.method == "least_squares");
  CHECK(cfg.publish.interval_ms == 0);
  CHECK(cfg.references.files.at(0) == std::filesystem::path("/x/a.nor"));
}

TEST_CASE("bad config is refused with the key named") {
  CHECK_THROWS_WITH_AS(make_config({{"fit", {{"metod", "nnls"}}}}, {}, "/"), doctest::Contains("fit.metod"), ConfigError);
  CHECK_THROWS_WITH_AS(make_config({{"publish", {{"interval_ms", "fast"}}}}, {}, "/"),
                       doctest::Contains("publish.interval_ms"), ConfigError);
  CHECK_THROWS_WITH_AS(make_config({{"ingest", {{"queue_frames", 0}}}}, {}, "/"), doctest::Contains("ingest.queue_frames"),
                       ConfigError);
  CHECK_THROWS_WITH_AS(make_config({{"fit", {{"method", "magic"}}}}, {}, "/"), doctest::Contains("fit.method"), ConfigError);
  CHECK_THROWS_WITH_AS(make_config(nlohmann::json::object(), {"novalue"}, "/"), doctest::Contains("key=value"), ConfigError);
  CHECK_THROWS_AS(make_config(nlohmann::json::array(), {}, "/"), ConfigError);
}

TEST_CASE("runtime reconfiguration only touches runtime keys") {
  const auto cfg = make_config(nlohmann::json::object(), {}, "/");
  const auto c2 = reconfigure(cfg, {{"fit.method", "least_squares"}});
  CHECK(c2.fit.method == "least_squares");
  CHECK_THROWS_WITH_AS(reconfigure(cfg, {{"ingest.endpoint", "tcp://127.0.0.1:1"}}), doctest::Contains("start-up"),
                       ConfigError);
}

TEST_CASE("config/README.md documents every key") {
  std::ifstream in(test::source_dir() / "config" / "README.md");
  std::stringstream ss;
  ss << in.rdbuf();
  for (const auto& k : config_keys()) {
    INFO(k.key);
    CHECK(ss.str().find("`" + k.key + "`") != std::string::npos);
  }
}

TEST_CASE("named reference libraries: a nested object stays whole, paths resolve next to the config, bad entries are named") {
  const auto cfg = make_config({{"references", {{"libraries", {{"fe-l", {"l/a.txt", "/abs/b.txt"}}, {"fe-k", "k"}}}}}}, {}, "/cfg");
  REQUIRE(cfg.references.libraries.size() == 2);
  CHECK(cfg.references.libraries.at("fe-l") == std::vector<std::filesystem::path>{"/cfg/l/a.txt", "/abs/b.txt"});
  CHECK(cfg.references.libraries.at("fe-k") == std::vector<std::filesystem::path>{"/cfg/k"});
  CHECK(cfg.effective.at("references.libraries").at("fe-k") == "k");
  const auto set = make_config(nlohmann::json::object(), {R"(references.libraries={"x": ["a.nor"]})"}, "/y");
  CHECK(set.references.libraries.at("x").at(0) == std::filesystem::path("/y/a.nor"));
  CHECK_THROWS_WITH_AS(make_config({{"references", {{"libraries", {{"bad", 3}}}}}}, {}, "/"), doctest::Contains("'bad'"), ConfigError);
  CHECK_THROWS_WITH_AS(make_config(nlohmann::json::object(), {"references.libraries=[]"}, "/"),
                       doctest::Contains("references.libraries"), ConfigError);
  CHECK_THROWS_WITH_AS(library_files("gone", {"/no/such/folder"}), doctest::Contains("'gone'"), ConfigError);
}

TEST_CASE("output.reused_scan_id is suffix (default) or refuse") {
  CHECK(make_config(nlohmann::json::object(), {}, "/").output.reused_scan_id == "suffix");
  CHECK(make_config(nlohmann::json::object(), {"output.reused_scan_id=refuse"}, "/").output.reused_scan_id == "refuse");
  CHECK_THROWS_WITH_AS(make_config(nlohmann::json::object(), {"output.reused_scan_id=overwrite"}, "/"),
                       doctest::Contains("output.reused_scan_id"), ConfigError);
}
