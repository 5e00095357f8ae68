// Authenticated remote control (CurveZMQ): a daemon with security.server_key on 127.0.0.1
// admits only the client keys its config lists, serves read-only keys status and snapshot
// only, and a non-loopback endpoint without keys is refused at start-up.
#include <doctest/doctest.h>

#include <fstream>

#include "live_daemon.hpp"
#include "security/curve.hpp"
#include "xanesd/protocol/curve_keys.hpp"

using namespace xanesd;
using namespace std::chrono_literals;

namespace {

struct Keys {
  std::filesystem::path dir;
  explicit Keys(const std::filesystem::path& d) : dir(d / "keys") {
    std::filesystem::create_directories(dir);
    for (const char* n : {"server", "control", "readonly", "ingest", "stranger"})
      protocol::write_key_files(dir / n, protocol::make_curve_keys());
  }
  std::string key(const std::string& n) const { return (dir / (n + ".key")).string(); }
  std::string pub(const std::string& n) const { return (dir / (n + ".pub")).string(); }
  std::vector<std::string> settings() const {
    return {"security.server_key=" + key("server"), "security.control_clients=[\"" + pub("control") + "\"]",
            "security.readonly_clients=[\"" + pub("readonly") + "\"]", "security.ingest_clients=[\"" + pub("ingest") + "\"]"};
  }
};

// A control request with `client` keys ("" = no CURVE); null when no reply comes within 1.5 s.
nlohmann::json request(zmq::context_t& ctx, const std::string& ep, const Keys& k, const std::string& client,
                       const nlohmann::json& req) {
  zmq::socket_t s(ctx, zmq::socket_type::req);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, 1500);
  s.set(zmq::sockopt::sndtimeo, 1500);
  if (!client.empty()) protocol::make_curve_client(s, k.pub("server"), k.key(client));
  s.connect(ep);
  if (!s.send(zmq::buffer(req.dump()), zmq::send_flags::none)) return nullptr;
  zmq::message_t reply;
  if (!s.recv(reply)) return nullptr;
  return nlohmann::json::parse(reply.to_string_view());
}

}  // namespace

TEST_CASE("CURVE: only listed keys connect; read-only keys get status and snapshot only") {
  const auto base = test::scratch("security-keys");
  const Keys k(base);
  test::LiveDaemon d("security", k.settings());
  const auto ep = d.daemon->endpoints().control;

  CHECK(request(d.ctx, ep, k, "", {{"cmd", "status"}}).is_null());          // no keys: no handshake, no reply
  CHECK(request(d.ctx, ep, k, "stranger", {{"cmd", "status"}}).is_null());  // a key nobody listed
  CHECK(request(d.ctx, ep, k, "ingest", {{"cmd", "status"}}).is_null());    // an ingest key is not a control key

  const auto ro = request(d.ctx, ep, k, "readonly", {{"cmd", "status"}});
  REQUIRE_FALSE(ro.is_null());
  CHECK(ro.value("ok", false));
  const auto denied = request(d.ctx, ep, k, "readonly", {{"cmd", "shutdown"}});
  REQUIRE_FALSE(denied.is_null());
  CHECK_FALSE(denied.value("ok", true));
  CHECK(denied.value("code", "") == "not_authorized");
  CHECK_FALSE(request(d.ctx, ep, k, "readonly", {{"cmd", "configure"}, {"set", {{"fit.method", "lasso"}}}}).value("ok", true));
  CHECK_FALSE(d.daemon->shutdown_requested());

  const auto ctl = request(d.ctx, ep, k, "control", {{"cmd", "configure"}, {"set", {{"publish.interval_ms", 100}}}});
  CHECK(ctl.value("ok", false));

  // Ingest: a sender without keys is not heard; the listed sender starts a scan, and a
  // read-only subscriber sees its status publication while one without keys does not.
  zmq::socket_t sub_ro(d.ctx, zmq::socket_type::sub), sub_none(d.ctx, zmq::socket_type::sub);
  for (auto* s : {&sub_ro, &sub_none}) {
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::subscribe, "status");
  }
  protocol::make_curve_client(sub_ro, k.pub("server"), k.key("readonly"));
  sub_ro.connect(d.daemon->endpoints().publish);
  sub_none.connect(d.daemon->endpoints().publish);
  zmq::socket_t intruder(d.ctx, zmq::socket_type::push), sender(d.ctx, zmq::socket_type::push);
  for (auto* s : {&intruder, &sender}) {
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::sndtimeo, 1000);
  }
  protocol::make_curve_client(sender, k.pub("server"), k.key("ingest"));
  intruder.connect(d.daemon->endpoints().ingest);
  sender.connect(d.daemon->endpoints().ingest);
  std::this_thread::sleep_for(500ms);  // handshakes and subscriptions
  (void)protocol::send(intruder, test::start("intruder").to_wire(), true);
  std::this_thread::sleep_for(300ms);
  CHECK(request(d.ctx, ep, k, "control", {{"cmd", "status"}}).value("state", "") == "idle");
  REQUIRE(protocol::send(sender, test::start("keyed").to_wire()));
  nlohmann::json st = nlohmann::json::object();
  for (int i = 0; i < 50 && st.value("state", "") != "running"; ++i) {
    std::this_thread::sleep_for(50ms);
    st = request(d.ctx, ep, k, "readonly", {{"cmd", "status"}});
    REQUIRE(st.is_object());
  }
  CHECK(st.value("state", "") == "running");
  CHECK(st.at("scan").value("scan_id", "") == "keyed");
  const auto heard = test::recv_message(sub_ro, 2000ms);
  REQUIRE(heard);
  CHECK(heard->topic == "status");
  CHECK_FALSE(test::recv_message(sub_none, 300ms));
}

TEST_CASE("CURVE: a non-loopback endpoint without keys is refused at start-up, saying how to make keys") {
  CHECK(is_loopback_endpoint("tcp://127.0.0.1:5555"));
  CHECK(is_loopback_endpoint("tcp://localhost:*"));
  CHECK(is_loopback_endpoint("tcp://[::1]:5555"));
  CHECK(is_loopback_endpoint("ipc:///tmp/xanesd"));
  CHECK_FALSE(is_loopback_endpoint("tcp://*:5555"));
  CHECK_FALSE(is_loopback_endpoint("tcp://0.0.0.0:5555"));
  CHECK_FALSE(is_loopback_endpoint("tcp://192.168.1.10:5555"));
  CHECK_FALSE(is_loopback_endpoint("tcp://eth0:5555"));
  const auto dir = test::scratch("security-refused");
  for (const char* key : {"ingest.endpoint", "publish.endpoint", "control.endpoint"}) {
    // Nothing is bound: the check runs before any socket exists.
    const auto cfg = make_config(nlohmann::json::object(),
                                 {"ingest.endpoint=tcp://127.0.0.1:*", "publish.endpoint=tcp://127.0.0.1:*",
                                  "control.endpoint=tcp://127.0.0.1:*", std::string(key) + "=tcp://0.0.0.0:0",
                                  "log.level=off", "output.directory=" + dir.string()},
                                 "/");
    try {
      Daemon daemon(cfg);
      FAIL("a non-loopback " << key << " without keys was accepted");
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      CHECK(what.find(key) != std::string::npos);
      CHECK(what.find("xanesd keygen") != std::string::npos);
    }
  }
  // A key file that is not one: a clear config error.
  std::ofstream(dir / "bad.key") << "public-key = nonsense\n";
  const auto cfg = make_config(nlohmann::json::object(),
                               {"ingest.endpoint=tcp://127.0.0.1:*", "publish.endpoint=tcp://127.0.0.1:*",
                                "control.endpoint=tcp://127.0.0.1:*", "security.server_key=" + (dir / "bad.key").string(),
                                "log.level=off", "output.directory=" + dir.string()},
                               "/");
  CHECK_THROWS_AS(Daemon{cfg}, ConfigError);
}
