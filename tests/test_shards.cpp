// Live sharding (parallel/shards.hpp) in one process: the science behind `mpirun -np N xanesd`
// (tests/python_mpi_live.py runs the real job). A row block's scan fed its rows of each frame
// holds the whole scan's samples and solves its maps on its own rows, bit for bit; a scan that
// hands its fit to FitShards (one rank here) publishes the maps of a scan that fits itself; row
// blocks written into a result dataset by their own rows (as the ranks of `xanesd fit` write
// their file) make the whole image.
#include <doctest/doctest.h>

#include <random>

#include "parallel/blocks.hpp"
#include "parallel/shards.hpp"
#include "store/h5.hpp"
#include "science_support.hpp"

using namespace xanesd;

namespace {

// The frames of `s`, in three forms by energy: full frames (with the XRF map on the first),
// two row blocks that straddle any cut near the middle, and shuffled pixel batches with a
// per-sample I0 array (in I0 units of 1e5: an ion chamber's); then spectra batches that
// measure the rows around the middle again.
std::vector<protocol::FrameMsg> mixed_frames(const sim::Scan& s, const std::string& id) {
  const int R = s.params.rows, C = s.params.cols;
  const auto P = static_cast<std::size_t>(R * C);
  std::vector<protocol::FrameMsg> out;
  std::mt19937_64 rng(11);
  std::int64_t seq = 0;
  for (std::size_t e = 0; e < s.params.energies_eV.size(); ++e) {
    auto full = sim::frame_message(s, id, e);
    const auto counts = full.counts.native_view<float>();
    auto frame = [&] {
      protocol::FrameMsg f;
      f.scan_id = id, f.seq = seq++, f.energy_index = full.energy_index, f.energy_eV = full.energy_eV;
      f.i0_scalar = full.i0_scalar;
      return f;
    };
    if (e % 3 == 0) {
      full.seq = seq++;
      out.push_back(std::move(full));
    } else if (e % 3 == 1) {
      for (const auto& [r0, r1] : {std::pair{0, R / 2 - 3}, std::pair{R / 2 - 3, R}}) {
        auto f = frame();
        f.region = {protocol::Region::Kind::rows, r0, r1 - r0};
        f.counts = protocol::Array::from<float>("counts", counts.subspan(static_cast<std::size_t>(r0 * C), static_cast<std::size_t>((r1 - r0) * C)),
                                                {r1 - r0, C});
        out.push_back(std::move(f));
      }
    } else {
      std::vector<std::int64_t> order(P);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      for (std::size_t b = 0; b < P; b += 97) {
        const std::size_t n = std::min<std::size_t>(97, P - b);
        std::vector<std::int64_t> pix(order.begin() + static_cast<std::ptrdiff_t>(b), order.begin() + static_cast<std::ptrdiff_t>(b + n));
        std::vector<float> c(n), i0(n);
        for (std::size_t i = 0; i < n; ++i) c[i] = counts[static_cast<std::size_t>(pix[i])], i0[i] = static_cast<float>(1e5 * *full.i0_scalar);
        auto f = frame();
        f.region = {protocol::Region::Kind::pixels, 0, 0};
        f.i0_scalar.reset();
        const std::vector<std::int64_t> shape{static_cast<std::int64_t>(n)};
        f.counts = protocol::Array::from<float>("counts", c, shape);
        f.i0 = protocol::Array::from<float>("i0", i0, shape);
        f.pixels = protocol::Array::from<std::int64_t>("pixels", pix, shape);
        out.push_back(std::move(f));
      }
    }
  }
  // Then the rows around the middle measured again as spectra batches of 41 pixels × every
  // fifth energy (batches straddle the cuts), 5 % brighter, with a per-sample I0 array.
  std::vector<int> energies;
  for (std::size_t e = 0; e < s.params.energies_eV.size(); e += 5) energies.push_back(static_cast<int>(e));
  const std::size_t E = energies.size(), first = P / 2 - 4 * static_cast<std::size_t>(C), last = P / 2 + 4 * static_cast<std::size_t>(C);
  for (std::size_t b = first; b < last; b += 41) {
    const std::size_t n = std::min<std::size_t>(41, last - b);
    std::vector<std::int64_t> pix(n);
    std::vector<float> c(n * E), i0(n * E);
    for (std::size_t i = 0; i < n; ++i) {
      pix[i] = static_cast<std::int64_t>(b + i);
      for (std::size_t j = 0; j < E; ++j) {
        const auto e = static_cast<std::size_t>(energies[j]);
        c[i * E + j] = 1.05f * s.counts[e * P + b + i];
        i0[i * E + j] = static_cast<float>(s.i0[e]);
      }
    }
    protocol::FrameMsg f;
    f.scan_id = id, f.seq = seq++;
    f.region = {protocol::Region::Kind::pixels, 0, 0};
    f.energy_indices = energies;
    for (const int e : energies) f.energies_eV.push_back(s.params.energies_eV[static_cast<std::size_t>(e)]);
    f.energy_index = energies.front(), f.energy_eV = f.energies_eV.front();
    const std::vector<std::int64_t> shape{static_cast<std::int64_t>(n), static_cast<std::int64_t>(E)};
    f.counts = protocol::Array::from<float>("counts", c, shape);
    f.i0 = protocol::Array::from<float>("i0", i0, shape);
    f.pixels = protocol::Array::from<std::int64_t>("pixels", pix, {static_cast<std::int64_t>(n)});
    out.push_back(std::move(f));
  }
  return out;
}

// Rows [r0, r1) of plane p of a per-pixel array of `image` pixels, C columns, stacked `planes` deep.
template <class V>
std::vector<double> rows_of(const V& v, std::size_t planes, int first_row, int r0, int r1, int C) {
  const std::size_t npix = v.size() / planes;
  std::vector<double> out;
  for (std::size_t p = 0; p < planes; ++p)
    for (int r = r0; r < r1; ++r)
      for (int c = 0; c < C; ++c) out.push_back(v[p * npix + static_cast<std::size_t>((r - first_row) * C + c)]);
  return out;
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](double x, double y) {
           return x == y || (std::isnan(x) && std::isnan(y));
         });
}

}  // namespace

TEST_CASE("row blocks fed their rows of each frame hold the whole scan's samples and solve its maps on their own rows, bit for bit") {
  // The scene's three species (with the whole library the spatial step finds no neighbour alike
  // enough to average, and would be trivially the same).
  const auto library = test::pick(science::load_reference_file(test::fe_library()), test::scene_species());
  const auto s = sim::simulate(library, test::scene_scan(46, 30, 500, 7));
  const int R = 46, C = 30;
  const auto settings = test::default_settings();
  REQUIRE(settings.spatial.enabled);
  REQUIRE(settings.spatial.radius <= parallel::kShardHaloRows);
  Scan whole(sim::start_message(s, "w"), library, settings);
  struct Block {
    int own0, own1, w0, w1;
    std::unique_ptr<Scan> scan;
  };
  std::vector<Block> blocks;
  for (const auto& [r0, r1] : parallel::row_blocks(R, 3, 1)) {
    const auto [w0, w1] = parallel::halo_window(r0, r1, R);
    Block b{r0, r1, w0, w1, nullptr};
    science::ImagePart part;
    part.begin = static_cast<std::size_t>((r0 - b.w0) * C), part.end = static_cast<std::size_t>((r1 - b.w0) * C);
    part.row0 = r0, part.image_rows = R;
    b.scan = std::make_unique<Scan>(parallel::start_rows(sim::start_message(s, "w"), b.w0, b.w1), library, settings, part);
    blocks.push_back(std::move(b));
  }
  REQUIRE(blocks[1].w0 > 0);  // a block with halo rows on both sides
  REQUIRE(blocks[1].w1 < R);
  auto frames = mixed_frames(s, "w");
  std::size_t pieces = 0;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    for (auto& b : blocks)
      if (auto part = parallel::frame_rows(frames[i], C, b.w0, b.w1)) {
        REQUIRE(b.scan->apply(*part).accepted);
        ++pieces;
      }
    REQUIRE(whole.apply(frames[i]).accepted);
    if (i % 40 == 39) {  // live cycles: the blocks solve as the whole scan does (no weighting, the spatial step)
      whole.solve_changed(2);
      for (auto& b : blocks) b.scan->solve_as(2, false, true);
    }
  }
  CHECK(pieces > frames.size());  // frames met several blocks (and pixel batches skipped some)
  whole.solve_changed(2);
  const auto& neighbours = whole.fit()->spatial_neighbours();
  REQUIRE(neighbours.size() == whole.pixels());
  CHECK(std::count_if(neighbours.begin(), neighbours.end(), [](float n) { return n > 1.5f; }) > 100);
  const std::size_t E = s.params.energies_eV.size();
  const auto K = static_cast<std::size_t>(whole.fit()->model().n_refs());
  for (auto& b : blocks) {
    CAPTURE(b.own0);
    b.scan->solve_as(2, false, true);
    // Every sample of the window (halo rows too), the XRF map.
    CHECK(same_bits(rows_of(b.scan->spectra(), E, b.w0, b.w0, b.w1, C), rows_of(whole.spectra(), E, 0, b.w0, b.w1, C)));
    CHECK(same_bits(rows_of(b.scan->xrf(), 1, b.w0, b.w0, b.w1, C), rows_of(whole.xrf(), 1, 0, b.w0, b.w1, C)));
    // The maps of its own rows, the spatial step's included.
    const auto &m = b.scan->fit()->maps(), &w = whole.fit()->maps();
    auto same = [&](const auto& block, const auto& image, std::size_t planes) {
      return same_bits(rows_of(block, planes, b.w0, b.own0, b.own1, C), rows_of(image, planes, 0, b.own0, b.own1, C));
    };
    CHECK(same(m.fractions, w.fractions, K));
    CHECK(same(m.fraction_sigma, w.fraction_sigma, K));
    CHECK(same(m.thickness, w.thickness, 1));
    CHECK(same(m.residual, w.residual, 1));
    CHECK(same(m.rfactor, w.rfactor, 1));
    CHECK(same(m.nenergies, w.nenergies, 1));
    CHECK(same(m.fitted, w.fitted, 1));
    CHECK(same(b.scan->fit()->spatial_neighbours(), whole.fit()->spatial_neighbours(), 1));
  }
  // The halo matters: a block cut without it differs from the whole image at its edge.
  auto& mid = blocks[1];
  science::ImagePart part;
  part.begin = 0, part.end = static_cast<std::size_t>((mid.own1 - mid.own0) * C), part.row0 = mid.own0, part.image_rows = R;
  Scan bare(parallel::start_rows(sim::start_message(s, "w"), mid.own0, mid.own1), library, settings, part);
  for (auto& f : frames)
    if (auto p = parallel::frame_rows(f, C, mid.own0, mid.own1)) REQUIRE(bare.apply(*p).accepted);
  bare.solve_as(2, false, true);
  CHECK_FALSE(same_bits(rows_of(bare.fit()->maps().fractions, K, mid.own0, mid.own0, mid.own1, C),
                        rows_of(whole.fit()->maps().fractions, K, 0, mid.own0, mid.own1, C)));
}

TEST_CASE("a scan that hands its fit to FitShards (one rank) has the maps, mask and selection of a scan that fits itself") {
  const auto library = science::load_reference_file(test::fe_library());
  const auto s = sim::simulate(test::pick(library, test::scene_species()), test::scene_scan(24, 30, 2000, 3));
  const auto cfg = make_config(nlohmann::json::object(), {}, "/");
  const auto settings = scan_settings(cfg);
  const parallel::SerialComm comm;
  parallel::FitShards shards(comm, cfg);
  auto run = [&](bool delegated) {
    auto start = sim::start_message(s, "d");
    if (delegated) shards.start(start, library);
    auto scan = std::make_unique<Scan>(std::move(start), library, settings);
    if (delegated) scan->delegate_fit(&shards);
    auto frames = mixed_frames(s, "d");
    for (std::size_t i = 0; i < frames.size(); ++i) {
      REQUIRE(scan->apply(frames[i]).accepted);
      if (i % 50 == 49) scan->solve_changed(2);
    }
    test::finish_scan(*scan);  // the stop, the selection on all the data, the refit it asks for
    return scan;
  };
  const auto own = run(false), delegated = run(true);
  REQUIRE(own->reference_selection());
  REQUIRE(delegated->reference_selection());
  CHECK(to_json(*delegated->reference_selection()) == to_json(*own->reference_selection()));
  // The selection narrowed the library: the blocks were refitted with the whole scan's choice.
  CHECK(own->fit()->model().n_refs() < static_cast<int>(library.size()));
  test::check_same_fit(*delegated, *own);
  const auto& b = own->fit()->maps();
  CHECK(std::count(b.fitted.begin(), b.fitted.end(), std::uint8_t{1}) > 24 * 30 / 2);
}

TEST_CASE("row blocks written into a result dataset by their own rows make the whole image and the whole volume") {
  // What each rank of `mpirun -np N xanesd fit` does with the result file (write_result_file):
  // its own rows of every plane, from its arrays that also hold halo rows above and below.
  const auto dir = test::scratch("shards-rows");
  const auto file_path = dir / "rows.h5";
  {
    auto file = h5::create_file(file_path);
    struct Case {
      std::string name;
      std::vector<hsize_t> dims;
      bool planes;
    };
    // An image with planes, a map, a volume with planes (4-row slices), a volume map.
    for (const auto& c : {Case{"image", {3, 10, 4}, true}, Case{"map", {10, 4}, false}, Case{"volume", {2, 3, 4, 5}, true},
                          Case{"volume_map", {3, 4, 5}, false}}) {
      CAPTURE(c.name);
      const std::size_t lead = c.planes ? 1 : 0;
      const hsize_t nplanes = c.planes ? c.dims[0] : 1, cols = c.dims.back();
      hsize_t rows = 1;
      for (std::size_t a = lead; a + 1 < c.dims.size(); ++a) rows *= c.dims[a];
      auto value = [&](hsize_t plane, hsize_t row, hsize_t col) { return static_cast<float>(plane * 1000 + row * 10 + col); };
      h5::create_allocated(file, c.name, H5T_NATIVE_FLOAT, c.dims);
      // Blocks of 3, 4 and the rest of the rows (the volume's cross its 4-row slices), 2 halo rows.
      for (const auto& [r0, r1] : {std::pair<hsize_t, hsize_t>{0, 3}, {3, 7}, {7, rows}}) {
        const hsize_t w0 = r0 >= 2 ? r0 - 2 : 0, w1 = std::min(rows, r1 + 2), stride = (w1 - w0) * cols;
        std::vector<float> local(nplanes * stride);
        for (hsize_t pl = 0; pl < nplanes; ++pl)
          for (hsize_t r = w0; r < w1; ++r)
            for (hsize_t x = 0; x < cols; ++x) local[pl * stride + (r - w0) * cols + x] = value(pl, r, x);
        h5::write_rows(file, c.name, H5T_NATIVE_FLOAT, local.data(), c.planes, r0, r1 - r0, (r0 - w0) * cols, stride);
      }
      const auto whole = h5::read<float>(file, c.name);
      REQUIRE(whole.size() == nplanes * rows * cols);
      std::size_t wrong = 0;
      for (hsize_t pl = 0; pl < nplanes; ++pl)
        for (hsize_t r = 0; r < rows; ++r)
          for (hsize_t x = 0; x < cols; ++x) wrong += whole[(pl * rows + r) * cols + x] != value(pl, r, x);
      CHECK(wrong == 0);
    }
    // Rows past the image, or more values than a plane of the buffer holds, are refused.
    std::vector<float> buffer(3 * 40);
    CHECK_THROWS_AS(h5::write_rows(file, "image", H5T_NATIVE_FLOAT, buffer.data(), true, 8, 3, 0, 40), h5::Error);
    CHECK_THROWS_AS(h5::write_rows(file, "image", H5T_NATIVE_FLOAT, buffer.data(), true, 0, 10, 4, 40), h5::Error);
  }
  std::filesystem::remove_all(dir);
}
