#include "parallel/shards.hpp"

#include <cstring>
#include <filesystem>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "parallel/blocks.hpp"

namespace xanesd::parallel {

using protocol::Array;
using protocol::FrameMsg;
using protocol::Region;
using protocol::StartMsg;
using protocol::StopMsg;

// Every rank's operation, one after another in one buffer: part r, bytes [bounds[r],
// bounds[r + 1]), goes to rank r.
struct Parts {
  std::vector<std::byte> all;
  std::vector<std::size_t> bounds{0};
  void end() { bounds.push_back(all.size()); }
  // The last part again for each of the other ranks (an operation that is the same for all).
  void repeat(int ranks) {
    const std::size_t b0 = bounds[bounds.size() - 2], n = bounds.back() - b0;
    all.reserve(all.size() + n * static_cast<std::size_t>(ranks - 1));
    for (int r = 1; r < ranks; ++r) {
      all.insert(all.end(), all.begin() + static_cast<std::ptrdiff_t>(b0), all.begin() + static_cast<std::ptrdiff_t>(b0 + n));
      end();
    }
  }
};

namespace {

// Elements [begin, end) of each of `groups` runs of `n` (an array of per-sample values, or
// channels × samples), kept in order with their dtype and byte order.
using Ranges = std::vector<std::pair<std::size_t, std::size_t>>;

Array take(const Array& a, std::size_t n, const Ranges& keep, std::vector<std::int64_t> shape) {
  const std::size_t item = protocol::itemsize(a.dtype()), groups = n ? a.size() / n : 0;
  std::size_t kept = 0;
  for (const auto& [b, e] : keep) kept += e - b;
  zmq::message_t data(groups * kept * item);
  auto* out = static_cast<std::byte*>(data.data());
  for (std::size_t g = 0; g < groups; ++g)
    for (const auto& [b, e] : keep) {
      std::memcpy(out, a.bytes() + (g * n + b) * item, (e - b) * item);
      out += (e - b) * item;
    }
  return Array(a.name(), a.dtype(), std::move(shape), a.little_endian(), std::move(data));
}

// An operation as rank 0 scatters it: its code, a msgpack header, and an ingest message (a
// block's start, frame or stop) in the wire protocol's own frames, each frame's bytes 16-byte
// aligned within the operation so that a rank reads them where they arrived (a float frame
// aligned for its floats).
enum class Op : std::uint8_t { start, frame, stop, extend, refit, solve, quit };

constexpr std::size_t kAlign = 16;

struct OpWriter {
  std::vector<std::byte>& bytes;
  std::size_t start;
  OpWriter(Parts& parts, Op op) : bytes(parts.all), start(parts.all.size()) { bytes.push_back(static_cast<std::byte>(op)); }
  void raw(const void* p, std::size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    bytes.insert(bytes.end(), b, b + n);
  }
  void size(std::uint64_t n) { raw(&n, sizeof n); }
  OpWriter& header(const nlohmann::json& j) {
    const auto packed = nlohmann::json::to_msgpack(j);
    size(packed.size());
    raw(packed.data(), packed.size());
    return *this;
  }
  OpWriter& message(protocol::WireMessage&& m) {
    auto frames = protocol::encode(std::move(m));
    size(frames.size());
    for (const auto& f : frames) {
      size(f.size());
      bytes.resize(start + (bytes.size() - start + kAlign - 1) / kAlign * kAlign);
      raw(f.data(), f.size());
    }
    return *this;
  }
};

// One operation as a rank received it (the scatter's buffer: aligned like the writer's start).
struct OpReader {
  std::span<const std::byte> bytes;
  std::size_t at = 1;
  Op op() const { return static_cast<Op>(bytes[0]); }
  std::uint64_t size() {
    std::uint64_t n;
    if (at + sizeof n > bytes.size()) throw std::runtime_error("shards: a truncated operation");
    std::memcpy(&n, bytes.data() + at, sizeof n);
    at += sizeof n;
    return n;
  }
  std::span<const std::byte> chunk(bool aligned = false) {
    const auto n = size();
    if (aligned) at = (at + kAlign - 1) / kAlign * kAlign;
    if (at > bytes.size() || n > bytes.size() - at) throw std::runtime_error("shards: a truncated operation");
    const auto c = bytes.subspan(at, n);
    at += n;
    return c;
  }
  nlohmann::json header() {
    const auto c = chunk();
    return nlohmann::json::from_msgpack(reinterpret_cast<const std::uint8_t*>(c.data()),
                                        reinterpret_cast<const std::uint8_t*>(c.data()) + c.size());
  }
  bool has_message() const { return at < bytes.size(); }
  // The message's frames point into `bytes` (no copy): it must not outlive them.
  protocol::WireMessage message() {
    std::vector<zmq::message_t> frames(size());
    for (auto& f : frames) {
      const auto c = chunk(true);
      f = zmq::message_t(const_cast<std::byte*>(c.data()), c.size(), nullptr, nullptr);
    }
    return protocol::decode(std::move(frames));
  }
};

nlohmann::json to_json(const std::vector<science::Reference>& refs) {
  auto out = nlohmann::json::array();
  for (const auto& r : refs)
    out.push_back({{"name", r.name}, {"source", r.source}, {"energies_eV", r.energies_eV}, {"mu", r.mu},
                   {"column", r.column}, {"normalized_here", r.normalized_here}, {"e0_eV", r.e0_eV},
                   {"edge_step", r.edge_step}, {"normalization", r.normalization}});
  return out;
}

std::vector<science::Reference> references_of(const nlohmann::json& j) {
  std::vector<science::Reference> refs;
  for (const auto& r : j)
    refs.push_back({r.at("name").get<std::string>(), r.at("source").get<std::string>(),
                    r.at("energies_eV").get<std::vector<double>>(), r.at("mu").get<std::vector<double>>(),
                    r.at("column").get<std::string>(), r.at("normalized_here").get<bool>(), r.at("e0_eV").get<double>(),
                    r.at("edge_step").get<double>(), r.at("normalization").get<std::string>()});
  return refs;
}

}  // namespace

std::optional<FrameMsg> frame_rows(const FrameMsg& f, int cols, int w0, int w1) {
  // A spectra batch's arrays hold a row of E samples per pixel: its pixels are kept whole rows.
  const std::size_t E = f.spectra() ? f.energy_indices.size() : 1;
  const std::size_t n = f.counts.size() / E, C = static_cast<std::size_t>(cols);
  FrameMsg out;
  out.scan_id = f.scan_id, out.seq = f.seq, out.energy_index = f.energy_index, out.energy_eV = f.energy_eV;
  out.region = f.region, out.i0_scalar = f.i0_scalar;
  out.energy_indices = f.energy_indices, out.energies_eV = f.energies_eV, out.i0_scalars = f.i0_scalars;
  Ranges keep;
  std::vector<std::int64_t> shape;
  switch (f.region.kind) {
    case Region::Kind::full:
      keep.emplace_back(static_cast<std::size_t>(w0) * C, static_cast<std::size_t>(w1) * C);
      shape = {w1 - w0, cols};
      break;
    case Region::Kind::rows: {
      const int r0 = std::max(f.region.row0, w0), r1 = std::min(f.region.row0 + f.region.nrows, w1);
      if (r0 >= r1) return std::nullopt;
      keep.emplace_back(static_cast<std::size_t>(r0 - f.region.row0) * C, static_cast<std::size_t>(r1 - f.region.row0) * C);
      out.region.row0 = r0 - w0, out.region.nrows = r1 - r0;
      shape = {r1 - r0, cols};
      break;
    }
    case Region::Kind::pixels: {
      std::vector<std::int64_t> pix(n), local;
      f.pixels->convert_to(std::span<std::int64_t>(pix));
      const auto lo = static_cast<std::int64_t>(w0) * cols, hi = static_cast<std::int64_t>(w1) * cols;
      for (std::size_t i = 0; i < n; ++i) {
        if (pix[i] < lo || pix[i] >= hi) continue;
        if (!keep.empty() && keep.back().second == i) ++keep.back().second;
        else keep.emplace_back(i, i + 1);
        local.push_back(pix[i] - lo);
      }
      if (local.empty()) return std::nullopt;
      shape = {static_cast<std::int64_t>(local.size())};
      out.pixels = Array::from<std::int64_t>("pixels", local, shape);
      break;
    }
  }
  auto xs = shape;  // XRF: channels × the samples' pixels
  if (f.xrf) xs.insert(xs.begin(), f.xrf->shape()[0]);
  Ranges samples = keep;  // the kept pixels' samples: E per pixel in a spectra batch
  for (auto& [b, e] : samples) b *= E, e *= E;
  if (f.spectra()) shape.push_back(static_cast<std::int64_t>(E));
  out.counts = take(f.counts, n * E, samples, shape);
  for (auto [from, to] : {std::pair{&f.i0, &out.i0}, std::pair{&f.dark, &out.dark}, std::pair{&f.flat, &out.flat}})
    if (*from) *to = take(**from, n * E, samples, shape);
  if (f.xrf) out.xrf = take(*f.xrf, n, keep, xs);
  return out;
}

StartMsg start_rows(const StartMsg& s, int w0, int w1) {
  StartMsg out;
  out.scan_id = s.scan_id, out.rows = w1 - w0, out.cols = s.cols, out.energies_eV = s.energies_eV;
  out.mode = s.mode, out.order = s.order, out.xrf_channels = s.xrf_channels, out.extend = s.extend;
  out.references = s.references, out.metadata = s.metadata;
  const Ranges rows{{static_cast<std::size_t>(w0) * s.cols, static_cast<std::size_t>(w1) * s.cols}};
  const std::size_t n = static_cast<std::size_t>(s.rows) * s.cols;
  if (s.dark) out.dark = take(*s.dark, n, rows, {w1 - w0, s.cols});
  if (s.flat) out.flat = take(*s.flat, n, rows, {w1 - w0, s.cols});
  return out;
}

// One rank's block of the running scan, and the operations on it. Rank 0's FitShards and the
// other ranks' run_shard_worker run the same code, so every rank enters every collective (the
// maps' gather) in the same order.
class Shard {
 public:
  explicit Shard(const Comm& comm) : comm_(comm) {}

  // Runs one operation; returns false on quit. On rank 0 a solve leaves the whole image's maps
  // in `solved`.
  bool run(std::span<const std::byte> bytes, FitDelegate::Solved* solved) {
    OpReader op{bytes};
    switch (op.op()) {
      case Op::quit: return false;
      case Op::start: {
        const auto h = op.header();
        rows_ = h.at("rows").get<int>(), cols_ = h.at("cols").get<int>();
        own_ = h.at("own").get<std::vector<std::pair<int, int>>>();
        const auto [r0, r1] = own_[static_cast<std::size_t>(comm_.rank())];
        window0_ = halo_window(r0, r1, rows_).first;
        science::ImagePart part;
        part.begin = static_cast<std::size_t>(r0 - window0_) * static_cast<std::size_t>(cols_);
        part.end = static_cast<std::size_t>(r1 - window0_) * static_cast<std::size_t>(cols_);
        part.row0 = r0, part.image_rows = rows_;
        Scan::Buffers recycled = block_ ? std::move(*block_).take_buffers() : Scan::Buffers{};
        block_.reset();
        block_ = std::make_unique<Scan>(StartMsg::from_wire(op.message()), references_of(h.at("refs")), settings_of(h),
                                        std::move(part), std::move(recycled));
        return true;
      }
      case Op::frame:
        if (op.has_message()) {
          auto f = FrameMsg::from_wire(op.message());
          // Rank 0 accepted it and reported its flags. A block that refuses it would fit other
          // data than the whole scan holds: the job ends rather than publish such maps.
          if (auto outcome = block_->apply(f); !outcome.accepted)
            throw std::runtime_error("rank " + std::to_string(comm_.rank()) + " refused frame seq " + std::to_string(f.seq) +
                                     " that rank 0 accepted: " + (outcome.issues.empty() ? "" : outcome.issues[0].message));
        }
        return true;
      case Op::stop: block_->stop(StopMsg::from_wire(op.message())); return true;
      case Op::extend: {
        const auto h = op.header();
        block_->extend(StartMsg::from_wire(op.message()), references_of(h.at("refs")));
        return true;
      }
      case Op::refit: {
        const auto h = op.header();
        block_->follow_fit(references_of(h.at("refs")), h.at("selected").get<std::vector<std::uint8_t>>(), settings_of(h));
        return true;
      }
      case Op::solve: {
        const auto h = op.header();
        std::vector<double> n{static_cast<double>(
            block_->solve_as(h.at("threads").get<int>(), h.at("weighted").get<bool>(), h.at("spatial").get<bool>()))};
        comm_.sum(n);  // pixels solved, halo rows counted by each block that holds them
        gather(solved);
        if (solved) solved->solved = static_cast<std::size_t>(n[0]);
        return true;
      }
    }
    throw std::runtime_error("shards: unknown operation " + std::to_string(static_cast<int>(op.op())));
  }

 private:
  // The scan settings of the config rank 0 sent (its effective config: the same keys it runs with).
  static ScanSettings settings_of(const nlohmann::json& header) {
    return scan_settings(make_config(header.at("config"), {}, std::filesystem::current_path()));
  }
  // Every rank's own rows of its block's maps into the whole image's on rank 0.
  void gather(FitDelegate::Solved* solved) {
    const auto* fit = block_->fit();
    if (!fit) throw std::runtime_error("rank " + std::to_string(comm_.rank()) + " has no fit to solve: " + block_->fit_error());
    const auto image = static_cast<std::size_t>(rows_) * static_cast<std::size_t>(cols_);
    std::vector<std::pair<std::size_t, std::size_t>> own;
    for (const auto& [r0, r1] : own_) own.emplace_back(static_cast<std::size_t>(r0) * cols_, static_cast<std::size_t>(r1 - r0) * cols_);
    const std::size_t np = block_->pixels();
    const std::size_t first = (static_cast<std::size_t>(own_[static_cast<std::size_t>(comm_.rank())].first - window0_)) * cols_;
    // Into the last solve's buffers on rank 0 (`solved`): fresh pages each cycle cost more than the transfer.
    science::LcfMaps maps = solved ? std::move(solved->maps) : science::LcfMaps{};
    auto planes = [&](const auto* local, std::size_t count, auto& reuse) {
      return gather_planes(comm_, local, np, first, count, own, image, std::move(reuse));
    };
    const auto& m = fit->maps();
    const auto K = static_cast<std::size_t>(fit->model().n_refs());
    maps.fractions = planes(m.fractions.data(), K, maps.fractions);
    maps.fraction_sigma = planes(m.fraction_sigma.data(), K, maps.fraction_sigma);
    maps.thickness = planes(m.thickness.data(), 1, maps.thickness);
    maps.residual = planes(m.residual.data(), 1, maps.residual);
    maps.rfactor = planes(m.rfactor.data(), 1, maps.rfactor);
    maps.nenergies = planes(m.nenergies.data(), 1, maps.nenergies);
    maps.fitted = planes(m.fitted.data(), 1, maps.fitted);
    // Every block runs the spatial step or none does (the whole scan decided).
    const auto& nb = fit->spatial_neighbours();
    science::ZeroedVector<float> neighbours;
    if (nb.size() == np) neighbours = planes(nb.data(), 1, neighbours);
    if (!solved) return;
    solved->maps = std::move(maps);
    solved->spatial_neighbours.assign(neighbours.begin(), neighbours.end());
  }

  const Comm& comm_;
  std::unique_ptr<Scan> block_;
  int rows_ = 0, cols_ = 0, window0_ = 0;
  std::vector<std::pair<int, int>> own_;
};

FitShards::FitShards(const Comm& comm, const Config& cfg)
    : comm_(comm), config_(cfg.effective), own_(std::make_unique<Shard>(comm)) {}

FitShards::~FitShards() {
  try {
    Parts parts;
    OpWriter(parts, Op::quit);
    run(same_for_all(std::move(parts)));
  } catch (const std::exception& e) {
    spdlog::error("shards: the other ranks could not be told to end: {}", e.what());
    comm_.abort(1);
  }
}

Parts FitShards::same_for_all(Parts parts) const {
  parts.end();
  parts.repeat(comm_.size());
  return parts;
}

void FitShards::run(Parts parts, Solved* solved) {
  const auto mine = comm_.scatter(parts.all, parts.bounds);
  // Rank 0's block failing would leave it out of step with the others: the job ends, as a
  // worker's failure ends it (the restarted job resumes from the journal).
  try {
    own_->run(mine, solved);
  } catch (const std::exception& e) {
    spdlog::error("xanesd rank 0: shards: {}", e.what());
    comm_.abort(1);
    throw;
  }
}

void FitShards::start(const StartMsg& whole, const std::vector<science::Reference>& refs) {
  rows_ = whole.rows, cols_ = whole.cols;
  blocks_ = row_blocks(rows_, comm_.size(), 1);
  const nlohmann::json h = {{"config", config_}, {"refs", to_json(refs)}, {"rows", rows_}, {"cols", cols_}, {"own", blocks_}};
  Parts parts;
  for (const auto& [r0, r1] : blocks_) {
    const auto [w0, w1] = halo_window(r0, r1, rows_);
    OpWriter(parts, Op::start).header(h).message(start_rows(whole, w0, w1).to_wire());
    parts.end();
  }
  run(std::move(parts));
}

void FitShards::frame(const FrameMsg& f) {
  Parts parts;
  for (const auto& [r0, r1] : blocks_) {
    OpWriter op(parts, Op::frame);
    const auto [w0, w1] = halo_window(r0, r1, rows_);
    if (auto part = frame_rows(f, cols_, w0, w1)) op.message(std::move(*part).to_wire());
    parts.end();
  }
  run(std::move(parts));
}

void FitShards::stop(const StopMsg& s) {
  auto copy = s;
  Parts parts;
  OpWriter(parts, Op::stop).message(std::move(copy).to_wire());
  run(same_for_all(std::move(parts)));
}

void FitShards::extend(const StartMsg& more, const std::vector<science::Reference>& refs) {
  Parts parts;
  for (const auto& [r0, r1] : blocks_) {
    const auto [w0, w1] = halo_window(r0, r1, rows_);
    OpWriter(parts, Op::extend).header({{"refs", to_json(refs)}}).message(start_rows(more, w0, w1).to_wire());
    parts.end();
  }
  run(std::move(parts));
}

void FitShards::refit(const std::vector<science::Reference>& library, const std::vector<std::uint8_t>& selected) {
  Parts parts;
  OpWriter(parts, Op::refit).header({{"config", config_}, {"refs", to_json(library)}, {"selected", selected}});
  run(same_for_all(std::move(parts)));
}

FitDelegate::Solved FitShards::solve(int threads, bool weighted, bool spatial, science::LcfMaps recycled) {
  Solved solved;
  solved.maps = std::move(recycled);
  Parts parts;
  OpWriter(parts, Op::solve).header({{"threads", threads}, {"weighted", weighted}, {"spatial", spatial}});
  run(same_for_all(std::move(parts)), &solved);
  return solved;
}

nlohmann::json FitShards::status() const { return {{"ranks", comm_.size()}, {"rows", blocks_}}; }

void run_shard_worker(const Comm& comm) {
  Shard shard(comm);
  // A failed operation ends the job: rank 0 and the other ranks would wait for this one in the
  // next collective.
  try {
    while (shard.run(comm.scatter({}, {}), nullptr)) {
    }
  } catch (const std::exception& e) {
    spdlog::error("xanesd rank {}: {}", comm.rank(), e.what());
    comm.abort(1);
  }
}

}  // namespace xanesd::parallel
