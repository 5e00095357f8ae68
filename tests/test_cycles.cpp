// Publication cycles run on their own thread while frames keep arriving (issue 13): the frames a
// cycle overlaps are staged and committed after it, in arrival order. Whatever the cycles
// overlapped, the final maps are the ones the same frames give a scan with no cycle at all.
#include <doctest/doctest.h>

#include <cstring>
#include <random>

#include "common/bounded_queue.hpp"
#include "live_daemon.hpp"
#include "science_support.hpp"
#include "store/h5.hpp"

using namespace xanesd;
using namespace std::chrono_literals;

namespace {

const std::vector<std::string> kSpecies = {"Magnetite", "Goethite", "Pyrite"};

// The frames of `s` in a random order of energies (seed), seq = arrival order: most as full
// frames (stageable during a cycle), every fifth energy as two row blocks (stageable too, the
// second into the first's staged plane), and three energies measured again at the end with the
// same counts (re-measurement: not stageable, the pipeline waits for the cycle).
std::vector<protocol::FrameMsg> frames_in_order(const sim::Scan& s, const std::string& id, std::uint64_t seed) {
  const std::size_t E = s.params.energies_eV.size();
  std::vector<std::size_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  order.push_back(order[3]), order.push_back(order[10]), order.push_back(order[20]);
  std::vector<protocol::FrameMsg> out;
  const int R = s.params.rows, C = s.params.cols, half = R / 2;
  for (std::size_t i = 0; i < order.size(); ++i) {
    auto f = sim::frame_message(s, id, order[i]);
    if (i % 5 == 2 && !f.xrf && i < E) {
      std::vector<float> counts(static_cast<std::size_t>(R * C));
      f.counts.convert_to(std::span<float>(counts));
      for (int b = 0; b < 2; ++b) {
        auto part = sim::frame_message(s, id, order[i]);
        part.region.kind = protocol::Region::Kind::rows;
        part.region.row0 = b * half, part.region.nrows = b ? R - half : half;
        const auto first = counts.begin() + static_cast<std::ptrdiff_t>(part.region.row0 * C);
        part.counts = protocol::Array::from<float>("counts", std::vector<float>(first, first + part.region.nrows * C),
                                                   {part.region.nrows, C});
        out.push_back(std::move(part));
      }
    } else {
      out.push_back(std::move(f));
    }
  }
  for (std::size_t i = 0; i < out.size(); ++i) out[i].seq = static_cast<std::int64_t>(i);
  return out;
}

struct FinalMaps {
  std::vector<float> fractions, fraction_sigma, thickness, residual;
  std::vector<std::uint8_t> mask, segments;
  std::int64_t staged = 0, cycles = 0;
};

FinalMaps read_maps(const std::filesystem::path& file) {
  auto f = h5::open_file(file);
  auto r = h5::open_group(f, "entry/results");
  return {h5::read<float>(r, "fractions"), h5::read<float>(r, "fraction_sigma"), h5::read<float>(r, "thickness"),
          h5::read<float>(r, "residual"), h5::read<std::uint8_t>(r, "mask"),
          h5::read<std::uint8_t>(f, "entry/results/segments/segments")};
}

const std::vector<std::string>& settings() {
  // The image-level selection is off: with it on, a selection that changes mid-scan refolds the
  // store in energy order (not arrival order), which rounds differently.
  static const std::vector<std::string> s = {"references.select=false", "fit.threads=2"};
  return s;
}

FinalMaps run_live(const sim::Scan& s, const std::string& id, std::uint64_t seed, int interval_ms) {
  auto extra = settings();
  extra.push_back("publish.interval_ms=" + std::to_string(interval_ms));
  test::LiveDaemon d("cycles-" + std::to_string(seed) + "-" + std::to_string(interval_ms), extra);
  const auto loaded = d.control({{"cmd", "load_references"}, {"files", {test::fe_library().string()}}, {"names", kSpecies}});
  REQUIRE(loaded.value("ok", false));
  d.send(sim::start_message(s, id).to_wire());
  auto frames = frames_in_order(s, id, seed);
  const auto n = static_cast<std::int64_t>(frames.size());
  for (auto& f : frames) {  // at a detector-like pace, so that cycles and frames overlap
    d.send(std::move(f).to_wire());
    std::this_thread::sleep_for(3ms);
  }
  protocol::StopMsg stop;
  stop.scan_id = id, stop.frames_sent = n;
  d.send(std::move(stop).to_wire());
  const auto st = d.wait_stopped(id, 1);
  REQUIRE(st.value("state", "") == "stopped");
  CHECK(st.at("scan").value("frames_applied", 0) == n);
  const auto& c = st.at("counters");
  CHECK(c.value("ingest.frames_accepted", 0) == n);
  CHECK(c.value("internal_errors", 0) == 0);
  auto maps = read_maps(d.dir / (id + ".h5"));
  maps.staged = c.value("ingest.frames_staged", std::int64_t{0});
  maps.cycles = c.value("publish.cycles", std::int64_t{0});
  return maps;
}

}  // namespace

TEST_CASE("frames in random order, cycles every 0, 10 or 250 ms: the same final maps as one solve at the end, bit for bit") {
  const auto refs = test::pick(science::load_reference_file(test::fe_library()), kSpecies);
  auto p = test::hxn_scan(96, 128);
  p.counts = 2000;
  const auto s = sim::simulate(refs, p);
  const auto cfg = make_config(nlohmann::json::object(), settings(), "/");
  std::int64_t staged_at_0 = 0;
  for (const std::uint64_t seed : {11u, 12u}) {
    // No cycle at all: the scan fed every frame, then solved once (what `xanesd fit` does).
    auto batch = std::make_unique<Scan>(sim::start_message(s, "c"), refs, scan_settings(cfg));
    for (auto& f : frames_in_order(s, "c", seed)) REQUIRE(batch->apply(f).accepted);
    batch->solve_changed(2);
    const auto& m = batch->fit()->maps();
    const auto fractions = science::apply_mask(m.fractions, batch->mask().valid);
    const std::vector<float> thickness(m.thickness.begin(), m.thickness.end()), residual(m.residual.begin(), m.residual.end());

    std::optional<FinalMaps> first;
    for (const int interval : {0, 10, 250}) {
      CAPTURE(seed);
      CAPTURE(interval);
      const auto live = run_live(s, "cycles", seed, interval);
      MESSAGE("order " << seed << ", publish.interval_ms=" << interval << ": " << live.cycles << " cycles, " << live.staged
                       << " frames staged while a cycle ran");
      if (interval == 0) staged_at_0 += live.staged;
      CHECK(live.cycles >= 2);  // at least one live cycle and the final one
      CHECK(live.fractions == fractions);
      CHECK(live.thickness == thickness);
      CHECK(live.residual == residual);
      CHECK(live.mask == batch->mask().valid);
      if (first) {
        CHECK(live.fraction_sigma == first->fraction_sigma);
        CHECK(live.segments == first->segments);
      } else {
        first = live;
      }
    }
  }
  // The decoupling was exercised: frames went in while cycles ran.
  CHECK(staged_at_0 > 0);
}

TEST_CASE("the reference selection and segmentation run beside the cycles: live segments, every topic's versions increasing") {
  // The whole library loaded (the selection has work to do), an analysis as often as it can.
  test::LiveDaemon d("cycles-analysis", {"publish.interval_ms=0", "segment.interval_ms=0", "fit.threads=2"});
  const auto refs = test::pick(science::load_reference_file(test::fe_library()), test::scene_species());
  const auto s = sim::simulate(refs, test::scene_scan(64, 64, 2000));
  d.send(sim::start_message(s, "analysis").to_wire());
  std::map<std::string, std::vector<std::int64_t>> versions;  // per topic, in arrival order
  std::map<std::int64_t, std::int64_t> fit_frames;               // maps/fractions version -> frames_applied
  std::vector<std::pair<std::int64_t, std::int64_t>> live_segments;  // (version, frames_applied) before the final maps
  std::optional<std::int64_t> final_version, preview_version;
  // Reads the PUB socket until `done` (or a minute: a sanitizer build is slow).
  auto read_until = [&](const std::function<bool()>& done) {
    const auto until = std::chrono::steady_clock::now() + 60s;
    while (!done() && std::chrono::steady_clock::now() < until) {
      auto m = test::recv_message(d.sub, 200ms);
      if (!m || m->header.value("scan_id", "") != "analysis" || m->topic == "status" || m->topic == "errors") continue;
      const auto v = m->header.at("version").get<std::int64_t>();
      const bool final = m->header.value("final", false);
      versions[m->topic].push_back(v);
      const auto frames = m->header.value("frames_applied", std::int64_t{-1});
      if (m->topic == "maps/fractions") {
        fit_frames[v] = frames;
        if (final) final_version = v;
        else preview_version = v;
      }
      if (m->topic == "maps/segments" && !final && m->header.value("waiting", "").empty()) live_segments.emplace_back(v, frames);
    }
  };
  const auto E = s.params.energies_eV.size();
  auto send = [&](std::size_t e0, std::size_t e1) {
    for (std::size_t e = e0; e < e1; ++e) {
      auto f = sim::frame_message(s, "analysis", e);
      f.seq = static_cast<std::int64_t>(e);
      d.send(std::move(f).to_wire());
      std::this_thread::sleep_for(15ms);
    }
  };
  // Half the energies, then frames again once a live segment map is out (however slow the build).
  send(0, E / 2);
  read_until([&] { return !live_segments.empty(); });
  send(E / 2, E);
  protocol::StopMsg stop;
  stop.scan_id = "analysis", stop.frames_sent = static_cast<std::int64_t>(E);
  d.send(std::move(stop).to_wire());
  read_until([&] { return final_version.has_value(); });
  REQUIRE(final_version);
  const auto st = d.wait_stopped("analysis", 1);
  const auto& c = st.at("counters");
  CHECK(c.value("internal_errors", 0) == 0);
  CHECK(c.value("ingest.frames_accepted", std::int64_t{0}) == static_cast<std::int64_t>(E));
  const auto runs = c.value("analysis.runs", std::int64_t{0});
  MESSAGE(runs << " analyses, " << c.value("publish.cycles", 0) << " cycles, " << live_segments.size()
                << " live segment maps; the pipeline waited "
                << c.value("time_us.pipeline.waited_for_analysis", std::int64_t{0}) / 1000 << " ms for analyses");
  CHECK(runs >= 1);
  // Within a topic versions only increase (a subscriber keeps the highest: PROTOCOL.md).
  for (const auto& entry : versions) {  // no structured bindings: CAPTURE's lambda cannot take them (clang)
    const auto& topic = entry.first;
    const auto& vs = entry.second;
    CAPTURE(topic);
    CHECK(std::adjacent_find(vs.begin(), vs.end(), std::greater_equal<>()) == vs.end());
  }
  // The analysis's products went out while the scan ran, with a cycle's fit maps, stamped with
  // the frames it saw (no more than that cycle's).
  REQUIRE(!live_segments.empty());
  for (const auto& segment : live_segments) {
    const std::int64_t v = segment.first, frames = segment.second;
    CAPTURE(v);
    REQUIRE(fit_frames.count(v));
    CHECK(frames >= 1);
    CHECK(frames <= fit_frames[v]);
  }
  // The final cycle: its fit maps as solved (not final), then the final maps with the next version.
  REQUIRE(preview_version);
  CHECK(*preview_version == *final_version - 1);
  CHECK(fit_frames[*preview_version] == static_cast<std::int64_t>(E));
  CHECK(st.at("scan").at("fit").at("references").size() < 11);  // the selection narrowed the library
}

#include "publish/frame_pool.hpp"

TEST_CASE("map frames are reused once released; small ones bypass the pool; the kept bytes stay under the cap") {
  FramePool pool(1024, 3 * 4096);
  void* first = nullptr;
  {
    auto a = pool.take(4096);
    first = a.data();
    std::memset(a.data(), 7, a.size());
  }  // released: kept for the next frame of its size
  CHECK(pool.kept_bytes() == 4096);
  {
    auto b = pool.take(4096);
    CHECK(b.data() == first);  // the same, already mapped buffer
    CHECK(pool.kept_bytes() == 0);
    auto c = pool.take(4096);  // a second one while the first is out: a new buffer
    CHECK(c.data() != first);
    // A message copy shares the frame: it comes back when the last holder lets go.
    zmq::message_t shared;
    shared.copy(c);
    c = zmq::message_t();
    CHECK(pool.kept_bytes() == 0);
  }
  CHECK(pool.kept_bytes() == 2 * 4096);
  {
    auto big = pool.take(8192);  // another image size: the cap makes room by dropping the others
  }
  CHECK(pool.kept_bytes() == 8192 + 4096);
  {
    auto small = pool.take(100);
    CHECK(small.size() == 100);
  }
  CHECK(pool.kept_bytes() == 8192 + 4096);  // small frames are plain messages
  const auto arr = pool.array<float>("x", std::vector<float>(1024, 2.f), {1024});
  CHECK(arr.native_view<float>()[1023] == 2.f);
  CHECK(pool.kept_bytes() == 8192);  // the 4096-byte frame it took
}

TEST_CASE("a scan on the last scan's buffers (store, fit statistics, maps) has a fresh scan's maps, bit for bit") {
  // The pipeline hands each scan's image-sized buffers to the next of the same size (pages
  // already mapped). Here the first scan leaves other data everywhere in them (the whole
  // library fitted, then the final cycle's selection and refit), and the second measures only
  // the top rows at half of its energies: a value left over in any buffer would show in its maps.
  const auto library = science::load_reference_file(test::fe_library());
  const auto refs = test::pick(library, test::scene_species());
  const auto settings = test::default_settings();
  const auto first = sim::simulate(refs, test::scene_scan(24, 30, 5000, 5));
  const auto second = sim::simulate(refs, test::scene_scan(24, 30, 500, 6));
  const int R = 24, C = 30, top = 14;
  auto run_second = [&](Scan::Buffers recycled) {
    auto scan = std::make_unique<Scan>(sim::start_message(second, "second"), library, settings, science::ImagePart{},
                                       std::move(recycled));
    for (std::size_t e = 0; e < second.params.energies_eV.size(); e += 2) {
      auto f = sim::frame_message(second, "second", e);
      const auto view = f.counts.native_view<float>();
      f.region = {protocol::Region::Kind::rows, 0, top};
      f.counts = protocol::Array::from<float>("counts", view.subspan(0, static_cast<std::size_t>(top * C)), {top, C});
      f.xrf.reset();
      REQUIRE(scan->apply(f).accepted);
      scan->solve_changed(2);
    }
    test::finish_scan(*scan);
    return scan;
  };
  auto last = std::make_unique<Scan>(sim::start_message(first, "first"), library, settings);
  for (std::size_t e = 0; e < first.params.energies_eV.size(); ++e) {
    auto f = sim::frame_message(first, "first", e);
    REQUIRE(last->apply(f).accepted);
  }
  test::finish_scan(*last);
  REQUIRE(last->reference_selection());
  auto buffers = std::move(*last).take_buffers();
  CHECK(buffers.store.size() == first.params.energies_eV.size() * static_cast<std::size_t>(R * C));
  CHECK(buffers.fit.stats.size() > 0);
  CHECK(buffers.fit.maps.thickness.size() == static_cast<std::size_t>(R * C));
  const auto reused = run_second(std::move(buffers));
  const auto fresh = run_second({});
  test::check_same_fit(*reused, *fresh);
  const auto& b = fresh->fit()->maps();
  // The rows never measured have no fit in either.
  CHECK(std::count(b.fitted.begin() + top * C, b.fitted.end(), std::uint8_t{1}) == 0);
  CHECK(std::count(b.fitted.begin(), b.fitted.begin() + top * C, std::uint8_t{1}) > top * C / 2);
  std::vector<float> sa(reused->spectra().begin(), reused->spectra().end()), sb(fresh->spectra().begin(), fresh->spectra().end());
  const auto same_or_both_nan = [](float x, float y) { return x == y || (std::isnan(x) && std::isnan(y)); };
  CHECK(std::equal(sa.begin(), sa.end(), sb.begin(), sb.end(), same_or_both_nan));
}

TEST_CASE("an energy-major row stream is staged during cycles, each energy's rows in one plane: the fit of the same frames as full frames, bit for bit") {
  const auto library = test::pick(science::load_reference_file(test::fe_library()), test::scene_species());
  const auto s = sim::simulate(library, test::scene_scan(46, 30, 500, 7));
  const int R = 46, C = 30, block = 10;
  auto settings = test::default_settings();
  settings.weighting = ScanSettings::Weighting::none;  // no count scales: frames can be staged
  auto rows_of = [&](std::size_t e, int r0, std::int64_t seq) {
    auto f = sim::frame_message(s, "rows", e);
    const auto counts = f.counts.native_view<float>();
    const int n = std::min(block, R - r0);
    f.seq = seq;
    f.xrf.reset();  // (frames with XRF are never staged)
    f.region = {protocol::Region::Kind::rows, r0, n};
    f.counts = protocol::Array::from<float>("counts", counts.subspan(static_cast<std::size_t>(r0 * C), static_cast<std::size_t>(n * C)), {n, C});
    return f;
  };
  const std::size_t E = s.params.energies_eV.size();
  // Reference: full frames, each folded as a whole plane.
  const auto full = test::run_scan(s, library, settings);
  // The same samples as row blocks, applied at once (each energy's blocks after the first
  // extend the plane queued for the fit) and with a cycle boundary every 7 blocks.
  Scan direct(sim::start_message(s, "rows"), library, settings), staged(sim::start_message(s, "rows"), library, settings);
  std::int64_t seq = 0;
  std::size_t staged_frames = 0, frames = 0;
  staged.begin_staging();
  for (std::size_t e = 0; e < E; ++e)
    for (int r0 = 0; r0 < R; r0 += block, ++seq, ++frames) {
      auto a = rows_of(e, r0, seq), b = rows_of(e, r0, seq);
      REQUIRE(direct.apply(a).accepted);
      if (seq % 7 == 0) staged_frames += staged.commit_staged(), staged.begin_staging();
      // Every block is stageable: its energy is new, or it is the energy staged last.
      CHECK(staged.stageable(b));
      REQUIRE(staged.apply(b).accepted);
      if (r0 == 0 && e + 1 < E) {
        // A block measured again is not (it replaces a sample): the pipeline would wait.
        auto again = rows_of(e, 0, seq);
        CHECK_FALSE(staged.stageable(again));
      }
    }
  staged_frames += staged.commit_staged();
  CHECK(staged_frames == frames);
  direct.solve_changed(2);
  staged.solve_changed(2);
  test::check_same_fit(direct, *full);
  test::check_same_fit(staged, *full);
  CHECK(direct.spectra() == full->spectra());
  CHECK(staged.spectra() == full->spectra());
}

namespace {

// The samples of pixels [p0, p1) of `s` as spectra batches of `width` consecutive pixels, every
// energy in the order `energies` gives, counts × `gain`, every 101st sample NaN.
std::vector<protocol::FrameMsg> spectra_batches(const sim::Scan& s, const std::string& id, std::size_t p0, std::size_t p1,
                                                std::size_t width, const std::vector<int>& energies, float gain,
                                                std::int64_t& seq) {
  const std::size_t P = s.pixels(), E = energies.size();
  const bool transmission = s.params.mode == protocol::Mode::transmission;
  std::vector<protocol::FrameMsg> out;
  for (std::size_t first = p0; first < p1; first += width) {
    const std::size_t n = std::min(width, p1 - first);
    std::vector<std::uint32_t> pixels(n);
    std::vector<float> counts(n * E), flat(n * E);
    for (std::size_t i = 0; i < n; ++i) {
      pixels[i] = static_cast<std::uint32_t>(first + i);
      for (std::size_t j = 0; j < E; ++j) {
        const std::size_t at = static_cast<std::size_t>(energies[j]) * P + first + i;
        counts[i * E + j] = (at % 101 == 7) ? NAN : s.counts[at] * gain;
        if (transmission) flat[i * E + j] = s.flat[at];
      }
    }
    protocol::FrameMsg f;
    f.scan_id = id, f.seq = seq++;
    f.region.kind = protocol::Region::Kind::pixels;
    f.pixels = protocol::Array::from<std::uint32_t>("pixels", pixels, {static_cast<std::int64_t>(n)});
    const std::vector<std::int64_t> shape = {static_cast<std::int64_t>(n), static_cast<std::int64_t>(E)};
    f.counts = protocol::Array::from<float>("counts", counts, shape);
    if (transmission) f.flat = protocol::Array::from<float>("flat", flat, shape);
    f.energy_indices = energies;
    for (const int e : energies) {
      f.energies_eV.push_back(s.params.energies_eV[static_cast<std::size_t>(e)]);
      if (!transmission) f.i0_scalars.push_back(s.i0[static_cast<std::size_t>(e)]);
    }
    f.energy_index = energies.front(), f.energy_eV = f.energies_eV.front();
    out.push_back(std::move(f));
  }
  return out;
}

}  // namespace

TEST_CASE("a spectra batch is folded a pixel at a time: the store, count scales and fit of its frames at one energy, bit for bit") {
  const auto library = test::pick(science::load_reference_file(test::fe_library()), test::scene_species());
  for (const auto mode : {protocol::Mode::fluorescence, protocol::Mode::transmission}) {
    CAPTURE(protocol::to_string(mode));
    auto params = test::scene_scan(46, 30, 500, 3);
    params.mode = mode;
    if (mode == protocol::Mode::transmission) params.dark = 5;  // the start's dark, per pixel
    const auto s = sim::simulate(library, params);
    auto settings = test::default_settings();
    // Poisson weighting of every solve (no spatial step): the maps read each sample's count scale.
    settings.weighting = ScanSettings::Weighting::poisson;
    settings.spatial.enabled = false;
    const std::size_t P = s.pixels(), E = s.params.energies_eV.size();
    std::vector<int> reversed(E), in_plan(E);
    for (std::size_t j = 0; j < E; ++j) in_plan[j] = static_cast<int>(j), reversed[j] = static_cast<int>(E - 1 - j);
    // Every pixel, energies last to first, in batches of 37 (not a multiple of the 16 pixels a
    // prefetch runs ahead); then pixels 200–419 measured again 10 % brighter (replacements).
    std::int64_t seq = 0;
    auto batches = spectra_batches(s, "sb", 0, P, 37, reversed, 1.f, seq);
    for (auto& b : spectra_batches(s, "sb", 200, 420, 64, in_plan, 1.1f, seq)) batches.push_back(std::move(b));

    Scan batched(sim::start_message(s, "sb"), library, settings), per_energy(sim::start_message(s, "sb"), library, settings);
    FrameOutcome sum_batched, sum_parts;
    auto add_up = [](FrameOutcome& sum, const FrameOutcome& o) {
      sum.samples_stored += o.samples_stored, sum.samples_replaced += o.samples_replaced;
      sum.samples_nonfinite += o.samples_nonfinite, sum.samples_clamped += o.samples_clamped;
    };
    std::int64_t part_seq = 0;
    for (auto& b : batches) {
      for (auto& part : b.per_energy()) {  // the batch's frames at one energy, each its own seq
        part.seq = part_seq++;
        const auto o = per_energy.apply(part);
        REQUIRE(o.accepted);
        add_up(sum_parts, o);
      }
      const auto o = batched.apply(b);
      REQUIRE(o.accepted);
      add_up(sum_batched, o);
    }
    CHECK(sum_batched.samples_stored == sum_parts.samples_stored);
    CHECK(sum_batched.samples_replaced == sum_parts.samples_replaced);
    CHECK(sum_batched.samples_replaced > 200 * E);
    CHECK(sum_batched.samples_nonfinite == sum_parts.samples_nonfinite);
    CHECK(sum_batched.samples_nonfinite > 0);
    CHECK(sum_batched.samples_clamped == sum_parts.samples_clamped);
    auto same_bits = [](const auto& a, const auto& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
    };
    CHECK(same_bits(batched.spectra(), per_energy.spectra()));  // NaN where not measured, in both
    batched.solve_changed(2);
    per_energy.solve_changed(2);
    test::check_same_fit(batched, per_energy);
    for (std::size_t p = 0; p < P; p += 7) CHECK(batched.fit()->energies_measured(p) == per_energy.fit()->energies_measured(p));
    // The statistics themselves: the maps are floats, a sum rounded otherwise can round to the same map.
    const auto a = std::move(batched).take_buffers(), b = std::move(per_energy).take_buffers();
    CHECK(same_bits(a.fit.stats, b.fit.stats));
  }
}

TEST_CASE("the ingest queue under back-pressure: a producer that waits on a full queue loses nothing and keeps the order") {
  BoundedQueue<int> queue(8);
  constexpr int kItems = 20000;
  std::atomic<int> refused{0};
  std::jthread producer([&](std::stop_token stop) {
    for (int i = 0; i < kItems; ++i) refused += !queue.push(i, stop);
  });
  int popped = 0, out_of_order = 0;
  while (popped < kItems) {
    const auto item = queue.pop_for(std::chrono::milliseconds(1000));
    REQUIRE(item.has_value());  // the producer always gets going again
    out_of_order += *item != popped;
    ++popped;
    if (popped % 997 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the queue fills meanwhile
  }
  producer.join();
  CHECK(refused == 0);
  CHECK(out_of_order == 0);
  const auto stats = queue.stats();
  CHECK(stats.at("pushed") == kItems);
  CHECK(stats.at("full_waits").get<int>() > 0);
  CHECK(stats.at("high_water") == 8);
  CHECK(queue.empty());
}

TEST_CASE("the ingest queue bounded by bytes: it never holds more than its bytes, a larger item goes alone, nothing is lost") {
  constexpr std::size_t kMaxBytes = 1000;
  BoundedQueue<int> queue(1000000, kMaxBytes);  // the bytes bind, not the count
  constexpr int kItems = 5000;
  auto bytes_of = [](int i) { return i % 50 == 7 ? std::size_t{2500} : static_cast<std::size_t>(1 + (i * 37) % 300); };
  std::jthread producer([&](std::stop_token stop) {
    for (int i = 0; i < kItems; ++i) REQUIRE(queue.push(i, stop, bytes_of(i)));
  });
  int popped = 0, out_of_order = 0;
  while (popped < kItems) {
    const auto item = queue.pop_for(std::chrono::milliseconds(1000));
    REQUIRE(item.has_value());
    out_of_order += *item != popped;
    ++popped;
    if (popped % 499 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  producer.join();
  CHECK(out_of_order == 0);
  const auto stats = queue.stats();
  CHECK(stats.at("pushed") == kItems);
  CHECK(stats.at("full_waits").get<int>() > 0);
  // Over the bound only by an oversized item on its own: never an oversized item plus others.
  CHECK(stats.at("high_water_bytes").get<std::size_t>() <= 2500);
  CHECK(stats.at("bytes") == 0);
  CHECK(stats.at("high_water").get<std::size_t>() < 1000);
  // A producer that would overfill it waits; try_push refuses instead.
  CHECK(queue.try_push(1, 600));
  CHECK_FALSE(queue.try_push(2, 600));
  CHECK(queue.stats().at("refused") == 1);
}
