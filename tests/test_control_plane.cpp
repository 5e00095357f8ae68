// A control plane that stays responsive (issue 12 item 5): status and snapshot are answered
// while a long command runs on the pipeline; a command whose request timed out is cancelled if
// it had not started, cancelled at its next step if it had (select_energies) and reported on
// the errors topic (late_reply); a request re-sent with the same request_id runs once.
#include <doctest/doctest.h>

#include <future>

#include "live_daemon.hpp"

using namespace xanesd;
using namespace std::chrono_literals;

namespace {

// A selection over a dense candidate grid with many training mixtures: seconds of pipeline time.
nlohmann::json long_selection() {
  std::vector<double> grid;
  for (int i = 0; i < 400; ++i) grid.push_back(7080 + 0.25 * i);
  return {{"cmd", "select_energies"}, {"energies_eV", grid}, {"n", 12}, {"objective", "equal_dwell"}, {"noise", 0.01}};
}

// A small finished scan, so that `save` has something to write.
void run_scan(test::LiveDaemon& d, const std::string& id) {
  d.send(test::start(id).to_wire());
  for (int e = 0; e < test::kE; ++e) d.send(test::frame(id, e, e, 100.f + 20.f * static_cast<float>(e)).to_wire());
  protocol::StopMsg stop;
  stop.scan_id = id;
  d.send(std::move(stop).to_wire());
  REQUIRE(d.wait_stopped(id).value("state", "") == "stopped");
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Mixtures for a selection of seconds: fewer on a sanitizer build (slowdown 10), whose full-size
// selection outlived control.reply_timeout_ms (60 s) on a loaded CI machine.
std::vector<std::string> busy_selection_settings() {
  const auto scaled = [](int n) { return std::to_string(static_cast<int>(n / test::slowdown())); };
  return {"select.train_mixtures=" + scaled(40000), "select.test_mixtures=" + scaled(8000)};
}

}  // namespace

TEST_CASE("status and snapshot are answered while select_energies runs") {
  test::LiveDaemon d("control-plane-busy", busy_selection_settings());
  run_scan(d, "busy");
  const auto t0 = std::chrono::steady_clock::now();
  auto selection = std::async(std::launch::async, [&] {  // seconds here; allow a slow machine two minutes
    return nlohmann::json::parse(test::control_frames(d.ctx, d.daemon->endpoints().control, long_selection(), 120000).at(0).to_string_view());
  });
  std::this_thread::sleep_for(300ms);  // the selection is running on the pipeline
  int answered_while_busy = 0;
  double slowest = 0;
  while (selection.wait_for(0ms) != std::future_status::ready && answered_while_busy < 20) {
    const auto q = std::chrono::steady_clock::now();
    const auto st = d.control({{"cmd", "status"}});
    const auto snap = test::control_frames(d.ctx, d.daemon->endpoints().control, {{"cmd", "snapshot"}});
    slowest = std::max(slowest, seconds_since(q));
    CHECK(st.value("ok", false));
    CHECK(nlohmann::json::parse(snap.at(0).to_string_view()).value("ok", false));
    if (selection.wait_for(0ms) != std::future_status::ready) {
      CHECK(st.value("control_pending", 0) == 1);
      ++answered_while_busy;
    }
    std::this_thread::sleep_for(50ms);
  }
  const auto reply = selection.get();
  const double busy = seconds_since(t0);
  MESSAGE("select_energies took " << busy << " s; " << answered_while_busy << " status+snapshot pairs answered meanwhile, slowest "
                                   << slowest << " s");
  CHECK(reply.value("ok", false));
  CHECK(answered_while_busy >= 3);  // the selection ran long enough to ask, and every request was answered
  CHECK(slowest < 1.0 * test::slowdown());
}

TEST_CASE("a timed-out command is cancelled if it had not started, and a running selection is cancelled and reported") {
  test::LiveDaemon d("control-plane-timeout",
                     {"select.train_mixtures=40000", "select.test_mixtures=8000", "control.reply_timeout_ms=300"});
  run_scan(d, "slow");
  const auto t0 = std::chrono::steady_clock::now();
  auto selection = std::async(std::launch::async, [&] { return d.control(long_selection()); });
  std::this_thread::sleep_for(50ms);
  // Queued behind the selection with its own timeout, which passes while the selection still
  // runs (the daemon's 300 ms for the selection): it must never run.
  auto save = std::async(std::launch::async, [&] { return d.control({{"cmd", "save"}, {"path", "never.h5"}, {"timeout_ms", 100}}); });
  const auto sel_reply = selection.get(), save_reply = save.get();
  CHECK(seconds_since(t0) < 3.0 * test::slowdown());  // answered at the timeout, not when the work ends
  CHECK_FALSE(sel_reply.value("ok", true));
  CHECK(sel_reply.value("code", "") == "command_timed_out");
  CHECK(sel_reply.value("error", "").find("late_reply") != std::string::npos);
  CHECK_FALSE(save_reply.value("ok", true));
  CHECK(save_reply.value("code", "") == "command_timed_out");
  CHECK(save_reply.value("error", "").find("cancelled") != std::string::npos);
  // The selection's outcome arrives on the errors topic when it ends; the save never ran.
  nlohmann::json late;
  const auto until = std::chrono::steady_clock::now() + 120s;
  while (late.is_null() && std::chrono::steady_clock::now() < until) {
    auto e = d.next_error();
    if (!e.is_null() && e.value("code", "") == "late_reply") late = e;
  }
  REQUIRE_FALSE(late.is_null());
  MESSAGE("late_reply " << seconds_since(t0) << " s after the request: " << late.value("message", ""));
  CHECK(late.value("message", "").find("select_energies") != std::string::npos);
  // The selection stopped at its next step instead of running to the end (it would then have
  // been published on `energies` and counted).
  CHECK(late.value("message", "").find("cancelled") != std::string::npos);
  nlohmann::json st;
  for (int i = 0; i < 40; ++i) {  // the pipeline drops the cancelled save at its next turn
    st = d.control({{"cmd", "status"}});
    if (st.at("counters").value("control.cancelled", 0) >= 2) break;
    std::this_thread::sleep_for(50ms);
  }
  CHECK(st.at("counters").value("control.cancelled", 0) == 2);  // the selection and the save
  CHECK(st.at("counters").value("control.energy_selections", 0) == 0);
  CHECK_FALSE(std::filesystem::exists(d.dir / "never.h5"));
  CHECK(d.serves_a_valid_scan());
}

namespace {

// A client with a fixed routing id (as a REQ_RELAXED or reconnecting client keeps it), speaking
// the REQ envelope (empty delimiter, then the request) over a DEALER so it can re-send.
struct RetryingClient {
  zmq::socket_t s;
  RetryingClient(zmq::context_t& ctx, const std::string& endpoint, const std::string& id) : s(ctx, zmq::socket_type::dealer) {
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::routing_id, id);
    s.connect(endpoint);
  }
  void send(const nlohmann::json& req) {
    const auto text = req.dump();
    s.send(zmq::message_t(), zmq::send_flags::sndmore);
    s.send(zmq::buffer(text), zmq::send_flags::none);
  }
  // The next reply's JSON, or null if none arrives within `timeout`.
  nlohmann::json receive(std::chrono::milliseconds timeout) {
    zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, timeout) <= 0) return nullptr;
    std::vector<zmq::message_t> frames;
    (void)zmq::recv_multipart(s, std::back_inserter(frames));
    REQUIRE(frames.size() >= 2);
    return nlohmann::json::parse(frames.at(1).to_string_view());
  }
};

}  // namespace

TEST_CASE("a request re-sent with the same request_id while it runs is run once and answered once") {
  test::LiveDaemon d("control-plane-duplicate", {"select.train_mixtures=40000", "select.test_mixtures=8000"});
  run_scan(d, "dup");
  RetryingClient client(d.ctx, d.daemon->endpoints().control, "beamline-gui");
  auto req = long_selection();
  req["request_id"] = "sel-1";
  client.send(req);
  std::this_thread::sleep_for(200ms);  // the first copy is running on the pipeline
  client.send(req);                    // the client's retry
  const auto reply = client.receive(120s);
  REQUIRE_FALSE(reply.is_null());
  CHECK(reply.value("ok", false));
  CHECK(reply.value("request_id", "") == "sel-1");
  CHECK(client.receive(1500ms).is_null());  // answered once
  auto st = d.control({{"cmd", "status"}});
  CHECK(st.at("counters").value("control.duplicate_requests", 0) == 1);
  CHECK(st.at("counters").value("control.energy_selections", 0) == 1);  // run once

  // Re-sent after its reply (the reply was lost): the same reply again, not a second run.
  const auto t0 = std::chrono::steady_clock::now();
  client.send(req);
  const auto again = client.receive(5s);
  REQUIRE_FALSE(again.is_null());
  CHECK(seconds_since(t0) < 1.0 * test::slowdown());
  CHECK(again.value("duplicate", false));
  CHECK(again.value("energies_eV", nlohmann::json()) == reply.value("energies_eV", nlohmann::json()));
  st = d.control({{"cmd", "status"}});
  CHECK(st.at("counters").value("control.duplicate_requests", 0) == 2);
  CHECK(st.at("counters").value("control.energy_selections", 0) == 1);

  // Another client with the same request_id is another request; a bad request_id is refused.
  RetryingClient other(d.ctx, d.daemon->endpoints().control, "other-gui");
  nlohmann::json save = {{"cmd", "save"}, {"path", "dup-copy.h5"}, {"request_id", "sel-1"}};
  other.send(save);
  const auto saved = other.receive(20s);
  REQUIRE_FALSE(saved.is_null());
  CHECK(saved.value("ok", false));
  CHECK_FALSE(saved.value("duplicate", false));
  save["request_id"] = nlohmann::json::array();
  other.send(save);
  const auto bad = other.receive(5s);
  REQUIRE_FALSE(bad.is_null());
  CHECK_FALSE(bad.value("ok", true));
  CHECK(bad.value("error", "").find("request_id") != std::string::npos);
  CHECK(d.serves_a_valid_scan());
}
