#include "store/scan_file.hpp"

#include <algorithm>
#include <cmath>

#include "store/h5.hpp"

namespace xanesd {

namespace {

using protocol::Array;

// A dataset of the file must have exactly this shape; the reader indexes by it.
void require_shape(hid_t file, const std::string& name, const std::vector<hsize_t>& want, const std::string& what) {
  if (h5::shape(file, name) != want) throw std::runtime_error("/" + name + " must be " + what);
}

Array rows_array_copy(const std::string& name, const float* data, int nrows, int cols) {
  return Array::from<float>(name, std::span<const float>(data, static_cast<std::size_t>(nrows) * cols), {nrows, cols});
}

// Rows of an energy-major frame; pixels of a pixel-major one.
int frame_rows(const ScanFileOptions& opt, int rows) { return opt.rows_per_frame > 0 ? std::min(opt.rows_per_frame, rows) : rows; }
std::size_t frame_pixels(const ScanFileOptions& opt, int cols) {
  return opt.chunk_pixels > 0 ? static_cast<std::size_t>(opt.chunk_pixels) : static_cast<std::size_t>(cols);
}
}  // namespace

std::int64_t scan_file_frames(const protocol::StartMsg& start, const ScanFileOptions& opt) {
  const auto energies = static_cast<std::int64_t>(start.energies_eV.size());
  if (start.rows <= 0 || start.cols <= 0) return 0;
  if (opt.order == protocol::Order::energy_major) {
    const int block = frame_rows(opt, start.rows);
    return energies * ((start.rows + block - 1) / block);
  }
  const auto pixels = static_cast<std::size_t>(start.rows) * static_cast<std::size_t>(start.cols), chunk = frame_pixels(opt, start.cols);
  return (opt.spectra ? 1 : energies) * static_cast<std::int64_t>((pixels + chunk - 1) / chunk);
}

namespace {
// /raw/counts: E × rows × cols, or a volume E × Z × Y × X (its slices stacked as Z·Y rows).
// The dataset's shape, checked, and the image it is read as.
std::vector<hsize_t> counts_shape(hid_t file, ScanImage& image) {
  const auto dims = h5::shape(file, "raw/counts");
  const char* what = "/raw/counts must be E×rows×cols (an image) or E×Z×Y×X (a volume) with E = len(/energy)";
  if (dims.size() != 3 && dims.size() != 4) throw std::runtime_error(what);
  const hsize_t slice_rows = dims[dims.size() - 2], slices = dims.size() == 4 ? dims[1] : 1;
  // Within the wire limits before any narrowing: every message this reader emits must be one the
  // daemon accepts (found by tests/fuzz/fuzz_scan_file).
  const auto max_pixels = static_cast<hsize_t>(protocol::kMaxPixels);
  const hsize_t rows = slices * slice_rows, cols = dims.back();
  if (dims[0] < 1 || dims[0] > static_cast<hsize_t>(protocol::kMaxEnergies) || slices < 1 || slice_rows < 1 || cols < 1 ||
      slices > max_pixels || slice_rows > max_pixels || rows > max_pixels || cols > max_pixels || rows * cols > max_pixels)
    throw std::runtime_error(std::string(what) + ", 1 ≤ E ≤ " + std::to_string(protocol::kMaxEnergies) +
                             " and 1 ≤ rows·cols ≤ " + std::to_string(protocol::kMaxPixels));
  image.rows = static_cast<int>(rows), image.cols = static_cast<int>(cols);
  image.slice_rows = dims.size() == 4 ? static_cast<int>(slice_rows) : 0;
  return dims;
}
}  // namespace

ScanImage scan_file_image(const std::filesystem::path& path, hid_t file_access) {
  ScanImage image;
  counts_shape(h5::open_file(path, file_access), image);
  return image;
}

std::int64_t read_scan_file(const std::filesystem::path& path, const ScanFileOptions& opt,
                            const std::function<void(protocol::IngestMessage&&)>& emit) {
  auto file = h5::open_file(path, opt.file_access);
  const auto mode = protocol::mode_from_string(h5::read_attr_string(file, "mode"));
  const auto energies = h5::read<double>(file, "energy");
  ScanImage shape;
  const auto dims = counts_shape(file, shape);
  if (dims[0] != energies.size()) throw std::runtime_error("/raw/counts must have E = len(/energy) planes");
  const int E = static_cast<int>(dims[0]), C = shape.cols;
  // A plane's shape (rows × cols, or Z × Y × X): dark, flat and XRF have it.
  const std::vector<hsize_t> image(dims.begin() + 1, dims.end());
  // The rows this reader covers (all but for an MPI rank's block); R of them from row W0.
  const int W0 = opt.row_begin, R = (opt.row_end < 0 ? shape.rows : opt.row_end) - W0;
  if (W0 < 0 || R < 1 || W0 + R > shape.rows)
    throw std::runtime_error("rows " + std::to_string(W0) + ".." + std::to_string(W0 + R - 1) + " are not rows of /raw/counts");
  const bool window = R != shape.rows;
  if (window && opt.order != protocol::Order::energy_major) throw std::runtime_error("a row block is read energy-major only");
  const std::size_t P = static_cast<std::size_t>(R) * C;
  // A whole-image 2-D array cut to the rows read.
  auto cut = [&](std::vector<float> v) {
    if (window) v = std::vector<float>(v.begin() + static_cast<long>(W0) * C, v.begin() + static_cast<long>(W0 + R) * C);
    return v;
  };
  // The energies this scan measures: all, or the file's nearest to each requested one.
  std::vector<int> plan;
  if (opt.only_energies_eV.empty()) {
    for (int e = 0; e < E; ++e) plan.push_back(e);
  } else {
    for (double want : opt.only_energies_eV) {
      const auto it = std::min_element(energies.begin(), energies.end(), [&](double a, double b) { return std::abs(a - want) < std::abs(b - want); });
      if (!(std::abs(*it - want) <= 1.0))  // NaN too
        throw std::runtime_error("energy " + std::to_string(want) + " eV is not in the scan file (nearest " + std::to_string(*it) + " eV)");
      const int e = static_cast<int>(it - energies.begin());
      if (std::find(plan.begin(), plan.end(), e) == plan.end()) plan.push_back(e);
    }
    std::sort(plan.begin(), plan.end());
  }
  const int planned = static_cast<int>(plan.size());

  std::vector<double> i0_scalar;
  bool i0_per_pixel = false, flat_per_energy = false;
  if (h5::exists(file, "raw/i0")) {
    const auto d = h5::shape(file, "raw/i0");
    if (d.size() == 1) {
      require_shape(file, "raw/i0", {dims[0]}, "one I0 per energy, or shaped like /raw/counts");
      i0_scalar = h5::read<double>(file, "raw/i0");
    } else {
      require_shape(file, "raw/i0", dims, "one I0 per energy, or shaped like /raw/counts");
      i0_per_pixel = true;
    }
  }
  protocol::StartMsg start;
  start.scan_id = opt.scan_id.empty() ? path.stem().string() : opt.scan_id;
  start.rows = R, start.cols = C;
  for (int e : plan) start.energies_eV.push_back(energies[static_cast<std::size_t>(e)]);
  start.mode = mode;
  start.order = opt.order;
  if (h5::exists(file, "raw/dark")) {
    require_shape(file, "raw/dark", image, "shaped like a plane of /raw/counts");
    const auto d = cut(h5::read<float>(file, "raw/dark"));
    start.dark = Array::from<float>("dark", d, {R, C});
  }
  if (h5::exists(file, "raw/flat")) {
    flat_per_energy = h5::shape(file, "raw/flat").size() == dims.size();
    require_shape(file, "raw/flat", flat_per_energy ? dims : image, "shaped like a plane of /raw/counts, or like /raw/counts");
    if (!flat_per_energy) start.flat = Array::from<float>("flat", cut(h5::read<float>(file, "raw/flat")), {R, C});
  }
  std::vector<std::vector<float>> xrf;
  if (h5::exists(file, "xrf")) {
    auto g = h5::open_group(file, "xrf");
    for (const auto& name : h5::list(g)) {
      require_shape(file, "xrf/" + name, image, "shaped like a plane of /raw/counts (XRF channel " + name + ")");
      start.xrf_channels.push_back(name);
      xrf.push_back(cut(h5::read<float>(g, name)));
    }
  }

  const std::string scan_id = start.scan_id;
  emit(std::move(start));

  std::int64_t seq = 0;
  auto base_frame = [&](int j) {  // j: position in the plan; plan[j]: the file's energy index
    const int e = plan[static_cast<std::size_t>(j)];
    protocol::FrameMsg f;
    f.scan_id = scan_id;
    f.seq = seq;
    f.energy_index = j;
    f.energy_eV = energies[static_cast<std::size_t>(e)];
    if (!i0_scalar.empty()) f.i0_scalar = i0_scalar[static_cast<std::size_t>(e)];
    return f;
  };
  auto send_frame = [&](protocol::FrameMsg&& f) {
    emit(std::move(f));
    ++seq;
  };

  if (opt.order == protocol::Order::energy_major) {
    const int block = frame_rows(opt, R);
    std::vector<float> counts(P), i0(i0_per_pixel ? P : 0), flat(flat_per_energy ? P : 0);
    auto rows_array = [&](const std::string& name, float* data, int nrows) {
      if (!opt.borrow_buffers) return rows_array_copy(name, data, nrows, C);
      // A constant ZeroMQ message (no free function): a view of the plane buffer.
      return Array(name, protocol::DType::float32, {nrows, C}, true,
                   zmq::message_t(data, static_cast<std::size_t>(nrows) * C * sizeof(float), nullptr));
    };
    for (int j = 0; j < planned; ++j) {
      const int e = plan[static_cast<std::size_t>(j)];
      auto read_plane = [&](const char* name, std::vector<float>& into) {
        h5::read_planes_into<float>(file, name, static_cast<hsize_t>(e), 1, std::span<float>(into), static_cast<hsize_t>(W0),
                                    static_cast<hsize_t>(R), opt.transfer);
      };
      read_plane("raw/counts", counts);
      if (i0_per_pixel) read_plane("raw/i0", i0);
      if (flat_per_energy) read_plane("raw/flat", flat);
      for (int r0 = 0; r0 < R; r0 += block) {
        const int n = std::min(block, R - r0);
        auto f = base_frame(j);
        if (n == R) {
          f.region.kind = protocol::Region::Kind::full;
        } else {
          f.region = {protocol::Region::Kind::rows, r0, n};
        }
        const std::size_t off = static_cast<std::size_t>(r0) * C;
        f.counts = rows_array("counts", counts.data() + off, n);
        if (!i0.empty()) f.i0 = rows_array("i0", i0.data() + off, n);
        if (!flat.empty()) f.flat = rows_array("flat", flat.data() + off, n);
        if (j == 0 && !xrf.empty()) {
          std::vector<float> x;
          for (const auto& ch : xrf) x.insert(x.end(), ch.begin() + static_cast<long>(off), ch.begin() + static_cast<long>(off) + static_cast<long>(n) * C);
          f.xrf = Array::from<float>("xrf", x, {static_cast<std::int64_t>(xrf.size()), n, C});
        }
        send_frame(std::move(f));
      }
    }
  } else {
    // Pixel-major: each chunk of pixels gets its whole spectrum before the next chunk starts.
    const auto all_counts = h5::read<float>(file, "raw/counts");
    std::vector<float> all_i0, all_flat;
    if (i0_per_pixel) all_i0 = h5::read<float>(file, "raw/i0");
    if (flat_per_energy) all_flat = h5::read<float>(file, "raw/flat");
    const std::size_t chunk = frame_pixels(opt, C);
    for (std::size_t p0 = 0; p0 < P; p0 += chunk) {
      const std::size_t n = std::min(chunk, P - p0);
      std::vector<std::uint32_t> pix(n);
      for (std::size_t i = 0; i < n; ++i) pix[i] = static_cast<std::uint32_t>(p0 + i);
      auto gather = [&](const std::vector<float>& src, int e) {
        return std::vector<float>(src.begin() + static_cast<long>(static_cast<std::size_t>(e) * P + p0),
                                  src.begin() + static_cast<long>(static_cast<std::size_t>(e) * P + p0 + n));
      };
      const auto N = static_cast<std::int64_t>(n);
      auto xrf_of_chunk = [&] {
        std::vector<float> x;
        for (const auto& ch : xrf) x.insert(x.end(), ch.begin() + static_cast<long>(p0), ch.begin() + static_cast<long>(p0 + n));
        return Array::from<float>("xrf", x, {static_cast<std::int64_t>(xrf.size()), N});
      };
      if (opt.spectra) {  // one message: N pixels × every planned energy, a spectrum per row
        auto f = base_frame(0);
        f.region.kind = protocol::Region::Kind::pixels;
        f.pixels = Array::from<std::uint32_t>("pixels", pix, {N});
        f.i0_scalar.reset();
        const auto Es = static_cast<std::int64_t>(planned);
        auto spectra_of = [&](const char* name, const std::vector<float>& src) {
          std::vector<float> out(n * static_cast<std::size_t>(planned));
          for (int j = 0; j < planned; ++j) {
            const float* plane = src.data() + static_cast<std::size_t>(plan[static_cast<std::size_t>(j)]) * P + p0;
            for (std::size_t i = 0; i < n; ++i) out[i * static_cast<std::size_t>(planned) + static_cast<std::size_t>(j)] = plane[i];
          }
          return Array::from<float>(name, out, {N, Es});
        };
        for (int j = 0; j < planned; ++j) {
          const int e = plan[static_cast<std::size_t>(j)];
          f.energy_indices.push_back(j);
          f.energies_eV.push_back(energies[static_cast<std::size_t>(e)]);
          if (!i0_scalar.empty()) f.i0_scalars.push_back(i0_scalar[static_cast<std::size_t>(e)]);
        }
        f.counts = spectra_of("counts", all_counts);
        if (!all_i0.empty()) f.i0 = spectra_of("i0", all_i0);
        if (!all_flat.empty()) f.flat = spectra_of("flat", all_flat);
        if (!xrf.empty()) f.xrf = xrf_of_chunk();
        send_frame(std::move(f));
        continue;
      }
      for (int j = 0; j < planned; ++j) {
        const int e = plan[static_cast<std::size_t>(j)];
        auto f = base_frame(j);
        f.region.kind = protocol::Region::Kind::pixels;
        f.pixels = Array::from<std::uint32_t>("pixels", pix, {N});
        f.counts = Array::from<float>("counts", gather(all_counts, e), {N});
        if (!all_i0.empty()) f.i0 = Array::from<float>("i0", gather(all_i0, e), {N});
        if (!all_flat.empty()) f.flat = Array::from<float>("flat", gather(all_flat, e), {N});
        if (j == 0 && !xrf.empty()) f.xrf = xrf_of_chunk();
        send_frame(std::move(f));
      }
    }
  }
  if (opt.include_stop) {
    protocol::StopMsg stop;
    stop.scan_id = scan_id;
    stop.frames_sent = seq;
    emit(std::move(stop));
  }
  return seq;
}

}  // namespace xanesd
