// The ingest socket's decoder: any multipart message → protocol::decode and the typed
// start/frame/stop parsers (Receiver::parse, exactly what the daemon runs). Documented outcome
// for bad input: protocol::ProtocolError. A message that parses must survive encode → parse again.
#include <variant>

#include "fuzz_support.hpp"
#include "ingest/receiver.hpp"

using namespace xanesd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  IngestMessage msg;
  try {
    msg = Receiver::parse(fuzz::split_frames(data, size));
  } catch (const protocol::ProtocolError&) {
    return 0;
  } catch (const std::exception& e) {
    fuzz::fail_unexpected(e, "Receiver::parse");
  }
  try {
    auto frames = protocol::encode(std::visit([](auto&& m) { return std::move(m).to_wire(); }, std::move(msg)));
    (void)Receiver::parse(std::move(frames));
  } catch (const std::exception& e) {
    fuzz::fail(std::string("an accepted message does not survive encode → parse: ") + e.what());
  }
  return 0;
}
