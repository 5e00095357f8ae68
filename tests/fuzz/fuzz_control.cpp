// The control socket: any request bytes → a real in-process xanesd on loopback (the one the
// bad-input tests use, Fe references loaded, a small running scan), over a real REQ socket.
// Every request must get a JSON object reply with a boolean "ok" (and a string "error" when it
// is false), and `status` must still answer after it. The daemon is shared by all inputs, as a
// long-running one is: a finding can depend on earlier inputs (rerun the crash directory to
// reproduce; libFuzzer keeps the last input).
#include "fuzz_support.hpp"
#include "live_daemon.hpp"

using namespace xanesd;

namespace {

constexpr int kReplyTimeoutMs = 60'000;  // a request may run selections; never forever

struct Harness {
  test::LiveDaemon live{"fuzz-control-" + std::to_string(::getpid())};
  zmq::socket_t req{live.ctx, zmq::socket_type::req};

  Harness() {
    req.set(zmq::sockopt::linger, 0);
    req.set(zmq::sockopt::rcvtimeo, kReplyTimeoutMs);
    req.connect(live.daemon->endpoints().control);
    live.send(test::start("fuzz").to_wire());
    for (int e = 0; e < test::kE; ++e) live.send(test::frame("fuzz", e, e, e < test::kE / 2 ? 100.f : 160.f).to_wire());
  }

  nlohmann::json ask(std::string_view request) {
    req.send(zmq::buffer(request), zmq::send_flags::none);
    std::vector<zmq::message_t> frames;
    if (!zmq::recv_multipart(req, std::back_inserter(frames)) || frames.empty())
      fuzz::fail("no reply within " + std::to_string(kReplyTimeoutMs) + " ms");
    auto reply = nlohmann::json::parse(frames[0].to_string_view(), nullptr, /*allow_exceptions=*/false);
    if (reply.is_discarded() || !reply.is_object()) fuzz::fail("the reply is not a JSON object");
    if (!reply.contains("ok") || !reply["ok"].is_boolean()) fuzz::fail("the reply has no boolean 'ok'");
    if (!reply["ok"].get<bool>() && !(reply.contains("error") && reply["error"].is_string()))
      fuzz::fail("a failed reply has no string 'error'");
    return reply;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Harness h;
  (void)h.ask(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!h.ask(R"({"cmd":"status"})")["ok"].get<bool>()) fuzz::fail("status fails after the request");
  return 0;
}
