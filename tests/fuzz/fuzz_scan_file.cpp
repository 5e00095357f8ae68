// The scan-file reader (README "Scan files"), structure-aware: the input chooses which of
// /energy, /raw/counts, /raw/i0, /raw/dark, /raw/flat, /xrf/* and the `mode` attribute exist,
// with what rank, shape and values, writes them as a real HDF5 file and reads it back with
// read_scan_file and random replay options. (Random bytes would fuzz libhdf5's own parser,
// which xanesd does not own; the reader's job is the file's structure.) Documented outcome for
// a bad file: std::runtime_error (h5::Error, ProtocolError); every message it does emit must be
// one the daemon's decoder accepts, since the replayer sends them unchecked.
#include <fuzzer/FuzzedDataProvider.h>

#include <variant>

#include "fuzz_support.hpp"
#include "ingest/receiver.hpp"
#include "store/h5.hpp"
#include "store/scan_file.hpp"

using namespace xanesd;

namespace {

std::vector<hsize_t> pick_dims(FuzzedDataProvider& in) {
  std::vector<hsize_t> dims(in.ConsumeIntegralInRange<int>(1, 4));
  for (auto& d : dims) d = in.ConsumeIntegralInRange<hsize_t>(0, 6);
  return dims;
}

template <class T>
void maybe_write(FuzzedDataProvider& in, hid_t loc, const std::string& name) {
  if (!in.ConsumeBool()) return;
  const auto dims = pick_dims(in);
  std::size_t n = 1;
  for (auto d : dims) n *= d;
  std::vector<T> v(n);
  for (auto& x : v) x = in.ConsumeBool() ? static_cast<T>(in.ConsumeIntegralInRange<int>(-2, 5000)) : in.ConsumeFloatingPoint<T>();
  h5::write<T>(loc, name, v.data(), dims);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  static const auto path = fuzz::scratch_file("scan.h5");
  try {
    auto file = h5::create_file(path);
    if (in.ConsumeBool()) {
      static const char* modes[] = {"fluorescence", "transmission", "", "xrf"};
      h5::attr_string(file, "mode", modes[in.ConsumeIntegralInRange<int>(0, 3)]);
    }
    maybe_write<double>(in, file, "energy");
    auto raw = h5::create_group(file, "raw");
    maybe_write<float>(in, raw, "counts");
    maybe_write<float>(in, raw, "i0");
    maybe_write<float>(in, raw, "dark");
    maybe_write<float>(in, raw, "flat");
    if (in.ConsumeBool()) {
      auto xrf = h5::create_group(file, "xrf");
      const int channels = in.ConsumeIntegralInRange<int>(0, 3);
      for (int c = 0; c < channels; ++c) maybe_write<float>(in, xrf, "ch" + std::to_string(c));
    }
  } catch (const h5::Error&) {
    return 0;  // a file the writer refuses is no test of the reader
  }
  ScanFileOptions opt;
  opt.order = in.ConsumeBool() ? protocol::Order::pixel_major : protocol::Order::energy_major;
  opt.rows_per_frame = in.ConsumeIntegralInRange<int>(-1, 7);
  opt.chunk_pixels = in.ConsumeIntegralInRange<int>(-1, 40);
  opt.include_stop = in.ConsumeBool();
  const int only = in.ConsumeIntegralInRange<int>(0, 3);
  for (int i = 0; i < only; ++i) opt.only_energies_eV.push_back(in.ConsumeFloatingPoint<double>());
  try {
    read_scan_file(path, opt, [](protocol::IngestMessage&& msg) {
      const bool is_start = std::holds_alternative<protocol::StartMsg>(msg);
      auto frames = protocol::encode(std::visit([](auto&& m) { return std::move(m).to_wire(); }, std::move(msg)));
      try {
        (void)Receiver::parse(std::move(frames));
      } catch (const std::exception& e) {
        fuzz::fail(std::string("the reader emitted a ") + (is_start ? "start" : "frame/stop") +
                   " message the daemon cannot decode: " + e.what());
      }
    });
  } catch (const std::runtime_error&) {
  } catch (const std::exception& e) {
    fuzz::fail_unexpected(e, "read_scan_file");
  }
  return 0;
}
