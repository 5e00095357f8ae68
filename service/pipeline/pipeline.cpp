#include "pipeline/pipeline.hpp"

#include <spdlog/spdlog.h>

#include "commands/pixel.hpp"
#include "commands/select_energies.hpp"
#include "common/allocator.hpp"
#include "publish/products.hpp"
#include "science/cancel.hpp"
#include "science/parallel.hpp"
#include "store/result_file.hpp"

namespace xanesd {

Pipeline::Pipeline(Config cfg, std::vector<science::Reference> refs, IngestQueue& queue, Publisher& publisher,
                   Counters& counters, std::unique_ptr<parallel::FitShards> shards)
    : cfg_(std::move(cfg)), shards_(std::move(shards)), refs_(std::move(refs)), library_(refs_), queue_(queue), publisher_(publisher), counters_(counters),
      journal_(cfg_.journal) {
  // Said at start-up, not discovered at the first stop with a scan to lose.
  output_error_ = output_directory_error(cfg_.output.directory);
  if (!output_error_.empty()) spdlog::error("output.directory is not usable: {}", output_error_);
  if (const auto j = journal_.stats(); !j.value("error", "").empty()) spdlog::error("no crash-safe scans: {}", j.value("error", ""));
  update_status();
}

Pipeline::~Pipeline() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void Pipeline::start() {
  recover_journal();
  thread_ = std::jthread([this](std::stop_token st) { run(st); });
  pthread_setname_np(thread_.native_handle(), "xanesd-pipe");  // visible in top -H, perf, gdb
}

Pipeline::Ticket Pipeline::submit(protocol::ControlRequest request) {
  auto cmd = std::make_shared<Command>();
  cmd->request = std::move(request);
  Ticket t{cmd->reply.get_future(), cmd->state};
  {
    std::lock_guard lock(commands_mutex_);
    commands_.push_back(std::move(cmd));
  }
  queue_.wake();
  return t;
}

void Pipeline::run_command(Command& c, std::stop_token stop) {
  auto expected = CommandState::queued;
  if (!c.state->compare_exchange_strong(expected, CommandState::running)) {  // its request timed out first
    counters_.add("control.cancelled");
    c.reply.set_value({{"ok", false}, {"error", "cancelled: its request timed out before it ran"}});
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  nlohmann::json reply;
  try {
    // Long work (select_energies) stops at its next step once nobody waits for it: its
    // request timed out (abandoned) or the daemon is stopping.
    science::CancelScope scope([&] { return c.state->load() == CommandState::abandoned || stop.stop_requested(); });
    reply = handle(c.request);
  } catch (const science::Cancelled&) {
    counters_.add("control.cancelled");
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    reply = {{"ok", false}, {"error", "cancelled after " + std::to_string(s) + " s: its request timed out or the daemon is stopping"}};
  } catch (const std::exception& e) {
    reply = {{"ok", false}, {"error", e.what()}};
  }
  expected = CommandState::running;
  if (!c.state->compare_exchange_strong(expected, CommandState::done)) {  // abandoned: nobody waits for the reply
    const auto& cmd = c.request.cmd;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    report({"late_reply", "'" + cmd + "' finished after its request had timed out (it ran " + std::to_string(s) + " s): " +
                              (reply.value("ok", false) ? std::string("ok") : "failed: " + reply.value("error", std::string()))},
           scan_ ? scan_->id() : "");
  }
  c.reply.set_value(std::move(reply));
}

namespace {

// Text that came from the wire (ids, names, parser messages quoting them) on its way to a log
// line or a publication: valid UTF-8 without control characters, at most `max` bytes.
std::string printable(std::string_view s, std::size_t max = 200) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && out.size() < max;) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool valid = len > 0 && i + len <= s.size();
    for (std::size_t k = 1; valid && k < len; ++k) valid = (static_cast<unsigned char>(s[i + k]) >> 6) == 0x2;
    if (!valid || (len == 1 && (c < 0x20 || c == 0x7F))) {
      out += '?';
      ++i;
      continue;
    }
    out.append(s.substr(i, len));
    i += len;
  }
  if (out.size() < s.size() && out.size() >= max) out += "…";
  return out;
}

}  // namespace

void Pipeline::report(const Issue& issue, const std::string& scan_id) {
  if (replaying_) {  // said when the scan was first received; the recovery summary is reported instead
    counters_.add("journal.replayed_issues");
    return;
  }
  const auto count = counters_.add("issues." + issue.code);
  const auto id = printable(scan_id, 128), message = printable(issue.message);
  // Flags on accepted data are routine at low counts; rejections are warnings. A flood of bad
  // messages must not flood the log: at most kLogLinesPerSecond lines, the rest counted.
  bool log = false;
  std::int64_t suppressed = 0;
  {
    std::lock_guard lock(log_mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (now - log_window_ >= std::chrono::seconds(1)) log_window_ = now, log_lines_ = 0;
    log = log_lines_++ < kLogLinesPerSecond;
    if (log) std::swap(suppressed, log_suppressed_);
    else ++log_suppressed_;
  }
  if (suppressed > 0) spdlog::warn("{} issue log line(s) suppressed (rate limit; every issue is counted in status)", suppressed);
  if (log) spdlog::warn("[{}] {}{}", issue.code, id.empty() ? "" : "scan " + id + ": ", message);
  publisher_.publish(make_error_message(id, issue.code, message, count, ++error_version_));
}

nlohmann::json Pipeline::status() const {
  nlohmann::json s;
  {
    std::lock_guard lock(status_mutex_);
    s = status_;
  }
  s["journal"] = journal_.stats();  // live: last_seq is the last acknowledged frame
  s["ingest_queue"] = queue_.stats();  // live, not as of the last publication
  s["publish_queue"] = publisher_.stats();
  return s;
}

void Pipeline::recover_journal() {
  const auto t0 = std::chrono::steady_clock::now();
  std::int64_t unreadable = 0;
  replaying_ = true;
  const auto rec = journal_.recover([&](std::vector<zmq::message_t>&& parts) {
    try {
      if (parts.size() == 2 && parts[0].to_string_view() == Journal::kFitStateTopic)
        apply_fit_state(nlohmann::json::from_msgpack(parts[1].data<std::uint8_t>(), parts[1].data<std::uint8_t>() + parts[1].size()));
      else
        on_message(Receiver::parse(std::move(parts)));
    } catch (const std::exception& e) {  // a record the CRC passed but this build cannot use
      ++unreadable;
      spdlog::error("journal: a record cannot be replayed: {}", e.what());
    }
  });
  replaying_ = false;
  if (!rec.found) return;
  // A scan saved as a partial result when the last process was stopped by a signal: that file
  // is this scan's own, rewritten when the scan ends (not a reused scan_id's earlier file).
  if (scan_ && scan_->state() == ScanState::running) {
    const auto own = result_path(cfg_.output.directory, "", scan_->id());
    if (is_partial_result(own, scan_->id())) scan_output_ = own;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto id = scan_ ? scan_->id() : std::string();
  recovery_ = {{"scan_id", id},
               {"state", scan_ ? to_string(scan_->state()) : "none"},
               {"records", rec.records},
               {"frames", rec.frames},
               {"last_seq", scan_ ? scan_->last_seq() : -1},
               {"bytes", rec.bytes},
               {"truncated_bytes", rec.truncated_bytes},
               {"truncated_because", rec.error},
               {"unreadable_records", unreadable},
               {"seconds", seconds}};
  counters_.add("journal.recoveries");
  if (scan_ && scan_->state() == ScanState::running) {
    report({"scan_recovered", "scan '" + id + "' reopened from the journal after an unclean exit: " + std::to_string(rec.frames) +
                                  " frames recovered (last seq " + std::to_string(scan_->last_seq()) +
                                  "); the sender resumes after journal.last_seq in status"},
           id);
  } else if (scan_) {
    spdlog::info("journal: last scan {} ({}) restored: {} frames", id, to_string(scan_->state()), rec.frames);
  }
  if (rec.truncated_bytes > 0 || unreadable > 0)
    report({"journal_truncated", "journal tail cut off at recovery: " + std::to_string(rec.truncated_bytes) + " bytes (" +
                                     rec.error + "), " + std::to_string(unreadable) + " unreadable record(s); frames in it were never acknowledged"},
           id);
  update_status();
  publisher_.publish(make_status_message(status(), id, version_));
}

void Pipeline::check_journal() {
  if (auto why = journal_.take_new_error(); !why.empty())
    report({"journal_failed", "the scan journal stopped writing, this scan is no longer crash-safe: " + why}, scan_ ? scan_->id() : "");
}

nlohmann::json Pipeline::scan_summary(const Scan& scan) const {
  auto s = scan.summary();
  // The daemon's peak over the scan: what the scan holds and what can wait around it in float32
  // frames (the figure to plan a machine's memory with; bench/run_live_memory_benchmark.sh).
  auto& memory = s["memory"];
  memory["held"] = scan.held_bytes();  // live, so not in summary(), which result files keep
  const double buffers = ingest_buffer_bytes(cfg_, 4.0 * static_cast<double>(scan.rows()) * scan.cols());
  memory["ingest_buffers"] = buffers;
  memory["peak_bytes"] = memory["bytes"].get<double>() + buffers;
  return s;
}

void Pipeline::update_status() {
  nlohmann::json refs = nlohmann::json::array();
  for (const auto& r : refs_) refs.push_back(r.name);
  nlohmann::json summary = nullptr;
  if (scan_ && finisher_.joinable() && !finish_.owned) {  // the finisher works on it: its summary as of its stop
    std::lock_guard lock(status_mutex_);
    summary = status_["scan"];
  } else if (scan_) {
    summary = scan_summary(*scan_);
  }
  nlohmann::json s = {{"state", scan_ ? to_string(scan_->state()) : "idle"},
                      {"scan", std::move(summary)},
                      {"references", refs},
                      {"version", version_},
                      {"result_file", result_file_},
                      {"output", {{"directory", cfg_.output.directory.string()}, {"writable", output_error_.empty()}, {"error", output_error_}}},
                      {"recovery", recovery_},
                      {"ingest_queue", queue_.stats()},
                      {"publish_queue", publisher_.stats()}};
  if (shards_) s["shards"] = shards_->status();
  std::lock_guard lock(status_mutex_);
  status_ = std::move(s);
}

void Pipeline::run(std::stop_token stop) {
  using namespace std::chrono;
  while (!stop.stop_requested()) {
    // Frames first, in arrival order. The wait ends early when a cycle, analysis or finish
    // ends or a command arrives (they wake the queue), and when the next cycle is due.
    if (auto msg = queue_.pop_for(until_next_cycle())) {
      try {
        // During a live cycle only frames the scan can stage go in; during an analysis only
        // frames into planes it does not read. Anything else waits for them.
        const auto* frame = std::get_if<protocol::FrameMsg>(&*msg);
        // The final cycle after a stop redoes everything: a live one stops after its current step.
        if (std::holds_alternative<protocol::StopMsg>(*msg)) cycle_cancel_ = true, analysis_cancel_ = true;
        // A scan finishing beside: only a new scan's start goes on beside it while it is scan_.
        if (finisher_.joinable() && !finish_.owned) {
          const auto* start = std::get_if<protocol::StartMsg>(&*msg);
          if (!(start && starts_beside_finish(*start))) wait_finish();
        }
        if (analysis_.joinable() && !(frame && scan_->state() == ScanState::running && scan_->analysis_safe(*frame, *analysis_job_)))
          wait_analysis();
        if (cycle_.joinable() && !(frame && scan_->state() == ScanState::running && scan_->stageable(*frame))) wait_cycle();
        on_message(std::move(*msg));
      } catch (const std::exception& e) {  // a bug, not bad input: count it and keep serving
        counters_.add("internal_errors");
        report({"internal_error", std::string("while handling a message: ") + e.what()}, scan_ ? scan_->id() : "");
      }
    }
    if (cycle_.joinable() && cycle_done_.load()) wait_cycle();
    if (analysis_.joinable() && analysis_done_.load() && !cycle_.joinable()) wait_analysis();
    std::deque<std::shared_ptr<Command>> cmds;
    {
      std::lock_guard lock(commands_mutex_);
      cmds.swap(commands_);
    }
    if (finisher_.joinable() && finisher_done_.load()) wait_finish();
    if (!cmds.empty()) wait_analysis(), wait_cycle(), wait_finish();
    for (auto& c : cmds) run_command(*c, stop);
    // Between two cycles (its inputs are the last cycle's mask and the planes stored so far),
    // before the next cycle starts beside it.
    if (!analysis_.joinable() && !cycle_.joinable() && analysis_due()) start_analysis();
    if (cycle_pending() && steady_clock::now() >= next_cycle_due()) shards_ ? run_cycle_here() : start_cycle();
  }
  wait_analysis();
  wait_cycle();
  wait_finish();
}

bool Pipeline::cycle_pending() const {
  return !cycle_.joinable() && scan_ && scan_->state() == ScanState::running && changed_since_publish_;
}

std::chrono::steady_clock::time_point Pipeline::next_cycle_due() const {
  // Never sooner than the interval after the last cycle ended, nor so soon that cycles take
  // more than half of the cores' time, whatever the image size: a cycle that used `cpu` over
  // its threads and took `wall` is followed by a rest of 2·cpu/cores − wall. On idle cores a
  // parallel cycle (cpu = cores·wall) rests as long as it took; slowed down by other work (a
  // finishing scan) its wall time grows and its CPU time does not, so the rest shrinks rather
  // than growing with it, and the latency of the frames it covers with it.
  static const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const auto rest = std::chrono::duration_cast<std::chrono::steady_clock::duration>(2 * last_cycle_cpu_ / cores) - last_cycle_;
  return last_publish_ + std::max<std::chrono::steady_clock::duration>(
                             {std::chrono::milliseconds(cfg_.publish.interval_ms), rest, std::chrono::steady_clock::duration::zero()});
}

std::chrono::steady_clock::duration Pipeline::until_next_cycle() const {
  // At most this long without a look at the stop token, the finisher and the analysis's due time.
  constexpr std::chrono::steady_clock::duration idle = std::chrono::milliseconds(10);
  if (!cycle_pending()) return idle;
  return std::clamp<std::chrono::steady_clock::duration>(next_cycle_due() - std::chrono::steady_clock::now(), {}, idle);
}

void Pipeline::on_message(IngestMessage&& msg) {
  std::visit(
      [this](auto&& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, protocol::StartMsg>) on_start(std::move(m));
        else if constexpr (std::is_same_v<T, protocol::FrameMsg>) on_frame(std::move(m));
        else on_stop(std::move(m));
      },
      std::move(msg));
}

std::optional<Issue> Pipeline::budget_issue(const protocol::StartMsg& s, std::size_t energies) const {
  const double bytes = scan_memory(s.rows, s.cols, energies, s.xrf_channels.size(), refs_.size(), scan_settings(cfg_)).total();
  if (bytes <= cfg_.ingest.max_scan_GiB * 1073741824.0) return std::nullopt;
  return Issue{"scan_too_large", "scan '" + s.scan_id + "' would need " + std::to_string(bytes / 1073741824.0) + " GiB (" +
                                     std::to_string(energies) + " energies, " + std::to_string(s.xrf_channels.size()) +
                                     " XRF channels), more than ingest.max_scan_GiB = " + std::to_string(cfg_.ingest.max_scan_GiB)};
}

void Pipeline::on_start(protocol::StartMsg&& s) {
  if (s.extend) {
    if (!scan_ || scan_->id() != s.scan_id) {
      counters_.add("ingest.rejected.start");
      report({"unknown_scan", "cannot extend scan '" + s.scan_id + "': it is not the current or last scan"}, s.scan_id);
      return;
    }
    // Checked before the store grows: an extended plan counts against the same budget.
    auto issue = budget_issue(scan_->start(), scan_->energies().size() + s.energies_eV.size());
    if (!issue) issue = scan_->extend(s, refs_);
    if (issue) {
      counters_.add("ingest.rejected.start");
      report(*issue, s.scan_id);
      return;
    }
    if (!replaying_) journal_.append(s), check_journal();
    spdlog::info("scan {} extended to {} energies", s.scan_id, scan_->energies().size());
    result_file_.clear();
    changed_since_publish_ = true;
    update_status();
    publisher_.publish(make_status_message(status(), s.scan_id, version_));
    return;
  }
  if (scan_ && scan_->state() == ScanState::running) {
    counters_.add("ingest.rejected.start");
    report({"scan_running", "start for scan '" + s.scan_id + "' rejected: scan '" + scan_->id() +
                                "' is running (send stop, or xanesctl abort)"},
           s.scan_id);
    return;
  }
  if (auto issue = budget_issue(s, s.energies_eV.size())) {
    counters_.add("ingest.rejected.start");
    report(*issue, s.scan_id);
    return;
  }
  if (auto why = path_name_error(s.scan_id); !why.empty()) {
    counters_.add("ingest.rejected.start");
    report({"invalid_scan_id", "scan_id " + why}, "");
    return;
  }
  for (const auto& ch : s.xrf_channels)
    if (auto why = path_name_error(ch); !why.empty() || std::count(s.xrf_channels.begin(), s.xrf_channels.end(), ch) > 1) {
      counters_.add("ingest.rejected.start");
      report({"invalid_xrf_channels", why.empty() ? "XRF channel '" + ch + "' is named twice" : "XRF channel name " + why}, s.scan_id);
      return;
    }
  if (auto issue = plan_issue(s.energies_eV)) {
    counters_.add("ingest.rejected.start");
    report(*issue, s.scan_id);
    return;
  }
  if (cfg_.output.reused_scan_id == "refuse" && !replaying_ &&
      std::filesystem::exists(std::filesystem::symlink_status(result_path(cfg_.output.directory, "", s.scan_id)))) {
    counters_.add("ingest.rejected.start");
    report({"scan_id_exists", "start for scan '" + s.scan_id + "' refused: " + s.scan_id + ".h5 exists already in " +
                                  cfg_.output.directory.string() + " (output.reused_scan_id = refuse): start it with a new scan_id"},
           s.scan_id);
    return;
  }
  const auto id = s.scan_id;
  std::string refs_error;
  if (!s.references.empty()) {
    // The scan names its references: they become the loaded set (as load_references would).
    // If they cannot be had, the scan is still recorded, not fitted, and says why.
    try {
      auto refs = resolve_references(s.references, cfg_.references.normalize, cfg_.references.energy_unit);
      science::resample(refs, s.energies_eV, cfg_.references.margin_eV);
      set_references(std::move(refs));
    } catch (const std::exception& e) {
      refs_error = std::string("the start's references: ") + e.what();
    }
  }
  // The last scan's buffers go to this one (a beamline runs scan after scan of one size). One
  // still finishing keeps its own: this scan takes an earlier one's, if the finisher left any.
  const bool beside_finish = finisher_.joinable();
  Scan::Buffers recycled;
  if (beside_finish) {
    {
      std::lock_guard lock(status_mutex_);
      finish_superseded_ = true;  // from here on status_ is this scan's
    }
    finish_.owned = std::move(scan_);
    recycled = std::move(spare_buffers_);
    counters_.add("scans.started_beside_finish");
  } else {
    recycled = scan_ ? std::move(*scan_).take_buffers() : std::move(spare_buffers_);
  }
  spare_buffers_ = {};
  scan_.reset();
  const auto scan_refs = refs_error.empty() ? refs_ : std::vector<science::Reference>{};
  if (shards_) shards_->start(s, scan_refs);
  scan_ = std::make_unique<Scan>(std::move(s), scan_refs, scan_settings(cfg_), science::ImagePart{}, std::move(recycled));
  if (shards_) scan_->delegate_fit(shards_.get());
  if (!refs_error.empty()) scan_->set_fit_error(refs_error + ": spectra are recorded but not fitted");
  scan_output_.clear();
  // Replaces the last scan's journal; one finishing beside keeps its journal until its file is written.
  if (!replaying_) journal_.begin(scan_->start(), beside_finish), check_journal();
  journal_fit_state(false);  // nobody waits for it: queued behind the start
  spdlog::info("scan {} started: {}×{} px, {} energies, {}", id, scan_->rows(), scan_->cols(), scan_->energies().size(),
               protocol::to_string(scan_->start().mode));
  if (!scan_->fit_error().empty()) report({"references_unusable", scan_->fit_error()}, id);
  version_ = 0;
  result_file_.clear();
  changed_since_publish_ = false;
  last_analysis_ = {}, next_analysis_ = {}, analysed_frames_ = -1, analysis_unpublished_.reset();
  last_cycle_ = {}, last_cycle_cpu_ = {};  // the last scan's final cycle (segmentation, edge maps, file) does not pace this one
  update_status();
  // Counted after the status snapshot shows the new scan: status is answered from that snapshot
  // (with live counters), so a client that sees the count sees the scan too.
  counters_.add("scans.started");
  publisher_.publish(make_status_message(status(), id, version_));
}

void Pipeline::on_frame(protocol::FrameMsg&& f) {
  if (!scan_ || scan_->state() != ScanState::running) {
    counters_.add("ingest.rejected.frame");
    report({"no_scan", "frame seq " + std::to_string(f.seq) + " for scan '" + f.scan_id +
                           "' arrived with no scan running (send start first)"},
           f.scan_id);
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto outcome = scan_->apply(f);
  const auto t1 = std::chrono::steady_clock::now();
  counters_.add("time_us.ingest.apply", std::chrono::duration_cast<std::chrono::microseconds>(t1 - t0).count());
  if (outcome.accepted) {
    counters_.add("ingest.frames_accepted");
    counters_.add("ingest.samples_stored", static_cast<std::int64_t>(outcome.samples_stored));
    changed_since_publish_ = true;
  } else {
    counters_.add("ingest.rejected.frame");
  }
  for (const auto& issue : outcome.issues) report(issue, f.scan_id);
  // Acknowledged (journal.last_seq) once the journal's writer has written it: from then on a
  // crash of the process loses nothing of it.
  if (outcome.accepted && !replaying_) journal_.append(std::move(f)), check_journal();
  counters_.add("time_us.ingest.journal",
                std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t1).count());
}

void Pipeline::on_stop(protocol::StopMsg&& s) {
  if (!scan_ || scan_->state() != ScanState::running || s.scan_id != scan_->id()) {
    counters_.add("ingest.rejected.stop");
    report({"unknown_scan", "stop for scan '" + s.scan_id + "' which is not running"}, s.scan_id);
    return;
  }
  for (const auto& issue : scan_->stop(s)) report(issue, s.scan_id);
  if (!replaying_) journal_.append(s), check_journal();
  // Replaying a stopped scan: its result file was written unless the crash came first.
  const auto written = replaying_ ? result_path(cfg_.output.directory, "", s.scan_id) : std::filesystem::path();
  if (replaying_ && std::filesystem::exists(written)) {
    result_file_ = std::filesystem::absolute(written).string();
    finish_scan(false);
  } else if (replaying_ || shards_) {
    finish_scan(cfg_.output.write_on_stop);
  } else {
    start_finish(cfg_.output.write_on_stop);
  }
}

bool Pipeline::guarded(const char* code, const std::function<void()>& step) {
  return guarded_for(code, scan_ ? scan_->id() : "", step);
}

bool Pipeline::guarded_for(const char* code, const std::string& scan_id, const std::function<void()>& step) {
  try {
    step();
    return true;
  } catch (const std::exception& e) {
    counters_.add("internal_errors");
    report({code, e.what()}, scan_id);
  } catch (...) {
    counters_.add("internal_errors");
    report({code, "unknown exception"}, scan_id);
  }
  return false;
}

void Pipeline::finish_scan(bool write_file) {
  wait_finish();
  release_free_heap();  // the scan's frames are in: their buffers' pages, before the final maps
  guarded("publish_failed", [&] { publish_cycle(true); });  // the result file is still written
  spdlog::info("scan {} {} ({}): {} frames applied", scan_->id(), to_string(scan_->state()), scan_->stop_reason(),
               scan_->frames_applied());
  if (write_file) {
    const auto reply = save("");
    if (!reply.value("ok", false)) report({"save_failed", reply.value("error", "")}, scan_->id());
  }
  update_status();
  publisher_.publish(make_status_message(status(), scan_->id(), version_));
}

void Pipeline::start_finish(bool write_file) {
  wait_finish();  // one at a time (the last scan's, if this one started beside it)
  wait_analysis();
  wait_cycle();
  const auto c = begin_cycle(true);
  analysis_unpublished_.reset();
  finish_ = Finish{scan_.get(), nullptr, scan_output_, result_file_, scan_->memory().total()};
  {
    std::lock_guard lock(status_mutex_);
    finish_superseded_ = false;
  }
  finisher_done_ = false;
  update_status();  // the stopped scan as of its stop: status shows that until the finisher ends
  // The finisher reads nothing the pipeline may change meanwhile: the effective config goes
  // with it (a new scan's references change references.files), commands wait for it.
  finisher_ = std::jthread([this, c, write_file, effective = cfg_.effective] {
    // The freed heap goes back before the final maps, here rather than on the pipeline thread:
    // the trim took about 1 ms there, while the next scan's start and frames waited.
    release_free_heap();
    Scan& scan = *finish_.scan;
    guarded_for("publish_failed", scan.id(), [&] { cycle_work(scan, true, c.version, scan.progress(), std::nullopt); });
    counters_.add("publish.cycles");
    counters_.add("time_us.cycle.total",
                  std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - c.t0).count());
    spdlog::info("scan {} {} ({}): {} frames applied", scan.id(), to_string(scan.state()), scan.stop_reason(), scan.frames_applied());
    if (write_file) {
      nlohmann::json reply;
      try {
        const auto out = default_output(scan, finish_.output);
        reply = write_result(scan, out, effective);
        if (reply.value("ok", false)) finish_.output = out, finish_.result_file = reply["path"].get<std::string>();
      } catch (const std::exception& e) {
        reply = {{"ok", false}, {"error", e.what()}};
      }
      if (!reply.value("ok", false)) report({"save_failed", reply.value("error", "")}, scan.id());
    }
    auto st = status();
    st["state"] = to_string(scan.state());
    st["scan"] = scan_summary(scan);
    st["version"] = c.version;
    st["result_file"] = finish_.result_file;
    publisher_.publish(make_status_message(st, scan.id(), c.version));
    {
      std::lock_guard lock(status_mutex_);
      if (!finish_superseded_) status_ = std::move(st);
    }
    finisher_done_ = true;
    queue_.wake();
  });
  pthread_setname_np(finisher_.native_handle(), "xanesd-finish");
}

bool Pipeline::starts_beside_finish(const protocol::StartMsg& s) const {
  if (s.extend || s.scan_id == finish_.scan->id()) return false;
  const double bytes = scan_memory(s.rows, s.cols, s.energies_eV.size(), s.xrf_channels.size(), refs_.size(), scan_settings(cfg_)).total();
  const double together = finish_.bytes + bytes;
  return together <= cfg_.ingest.beside_finish_MiB * 1048576.0 && together <= cfg_.ingest.max_scan_GiB * 1073741824.0;
}

void Pipeline::wait_finish() {
  if (!finisher_.joinable()) return;
  join_timed(finisher_, "time_us.pipeline.waited_for_finish");
  if (finish_.owned) {  // a newer scan runs: the finished one's buffers wait for the next start
    spare_buffers_ = std::move(*finish_.owned).take_buffers();
  } else {
    result_file_ = finish_.result_file;
    scan_output_ = finish_.output;
    last_publish_ = std::chrono::steady_clock::now();
    update_status();
  }
  finish_ = Finish{};
  journal_.release_finishing();
}

Pipeline::CycleStart Pipeline::begin_cycle(bool final) {
  const auto t0 = std::chrono::steady_clock::now();
  // The reference selection and the segmentation run with the final maps; while the scan runs,
  // on the analysis thread (start_analysis).
  changed_since_publish_ = false;  // frames from now on make the next cycle
  version_ += final ? 2 : 1;  // the final cycle publishes its fit maps first, with a version of their own
  return {version_, t0};
}

bool Pipeline::analysis_due() const {
  if (!scan_ || scan_->state() != ScanState::running || scan_->frames_applied() <= analysed_frames_) return false;
  if (!scan_->fit() && !cfg_.segment.enabled) return false;
  // Reference selection and segmentation cost more than a solve on big images: after the scan's
  // first cycle (its mask), then never sooner than segment.interval_ms after the last one ended,
  // nor sooner than that one took: frames into the planes it reads (pixel batches, row blocks,
  // re-measurements) wait for it at most about half the time.
  return version_ > 0 && std::chrono::steady_clock::now() >= next_analysis_;
}

void Pipeline::start_analysis() {
  last_analysis_ = std::chrono::steady_clock::now();
  next_analysis_ = std::chrono::steady_clock::time_point::max();  // set when it ends (wait_analysis)
  analysed_frames_ = scan_->frames_applied();
  // Half the cores: the fit's cycles and ingest keep the rest.
  analysis_job_ = scan_->begin_analysis(std::max(1, solve_threads(cfg_) / 2));
  analysis_done_ = false;
  analysis_cancel_ = false;
  // The scan outlives the thread: a start or stop waits for it (run) before it replaces or ends the scan.
  analysis_ = std::jthread([this, scan = scan_.get()] {
    using clock = std::chrono::steady_clock;
    auto& a = *analysis_job_;
    auto t = clock::now();
    auto lap = [&](const char* phase) {
      const auto now = clock::now();
      counters_.add(std::string("time_us.analysis.") + phase, std::chrono::duration_cast<std::chrono::microseconds>(now - t).count());
      t = now;
    };
    // A stop cancels it between its steps and within its passes over every pixel (a few ms
    // apart; the final cycle redoes both on all the data).
    const science::CancelScope cancel([this] { return analysis_cancel_.load(); });
    auto step = [&](const char* code, auto&& run) {
      return guarded(code, [&] {
        try {
          run();
        } catch (const science::Cancelled&) {
          a.cancelled = true;
        }
      });
    };
    if (!step("reference_selection_failed", [&] { scan->run_selection(a); })) a.selection.reset();
    lap("reference_selection");
    if (!a.cancelled && !step("segmentation_failed", [&] { scan->run_segmentation(a); })) a.segmenter.reset();
    lap("segmentation");
    analysis_done_ = true;
    queue_.wake();
  });
  pthread_setname_np(analysis_.native_handle(), "xanesd-analyse");
}

void Pipeline::join_timed(std::jthread& thread, const char* counter) {
  const auto t0 = std::chrono::steady_clock::now();
  thread.join();
  counters_.add(counter, std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
}

void Pipeline::wait_analysis() {
  if (!analysis_.joinable()) return;
  join_timed(analysis_, "time_us.pipeline.waited_for_analysis");
  const auto ended = std::chrono::steady_clock::now();
  next_analysis_ = ended + std::max<std::chrono::steady_clock::duration>(std::chrono::milliseconds(cfg_.segment.interval_ms),
                                                                          ended - last_analysis_);
  wait_cycle();  // a refit must not run beside a cycle
  auto job = std::move(*analysis_job_);
  analysis_job_.reset();
  if (job.cancelled) {
    counters_.add("analysis.cancelled");
    return;
  }
  const auto at = job.at;
  bool refitted = false;
  if (!guarded("reference_selection_failed", [&] { refitted = scan_->commit_analysis(std::move(job), solve_threads(cfg_)); }))
    return;
  counters_.add("analysis.runs");
  if (refitted) counters_.add("analysis.refits");  // the selection changed the references fitted
  // Its products go out with the next cycle's maps (a refit's too), which runs now: each
  // topic's versions increase, and a cycle's products share its version (PROTOCOL.md).
  analysis_unpublished_ = at;
  changed_since_publish_ = true;
}

bool Pipeline::cycle_work(Scan& scan, bool final, std::int64_t version, ScanProgress at, std::optional<ScanProgress> analysis_at) {
  using clock = std::chrono::steady_clock;
  const int threads = solve_threads(cfg_);
  auto t = clock::now();
  auto lap = [&](const char* phase) {  // cumulative time per phase in status (counters time_us.cycle.*)
    const auto now = clock::now();
    counters_.add(std::string("time_us.cycle.") + phase, std::chrono::duration_cast<std::chrono::microseconds>(now - t).count());
    t = now;
  };
  scan.fold(threads);
  lap("fold");
  const auto solved = scan.solve_changed(threads);
  lap("solve");
  auto publish = [&](std::vector<protocol::WireMessage>&& messages) {
    lap("encode");
    for (auto& m : messages) publisher_.publish(std::move(m));
    lap("publish");
  };
  if (!final && cycle_cancel_) return false;  // the final cycle publishes the final maps now
  // The fit's maps go out as soon as they are solved, then the analysis's products if it has
  // refreshed them since the last cycle. The final cycle's fit maps (not final yet, with the
  // first of its two versions) go out before its reference selection, segmentation and edge
  // maps, several times the solve on small images: the last frames' latency is the fold and
  // solve's, as live.
  publish(make_map_messages(scan, final ? version - 1 : version, false, false, &at));
  if (analysis_at) publish(make_map_messages(scan, version, false, true, &*analysis_at, false));
  if (final) {
    guarded_for("reference_selection_failed", scan.id(), [&] { scan.update_reference_selection(threads); });
    lap("reference_selection");
    // A failed segmentation costs its own products (not published this cycle), not the maps.
    // Segmentation and edge maps run side by side: their times overlap, "analysis" is the wall.
    const auto analysis = scan.segment_and_map_edges(threads);
    lap("analysis");
    counters_.add("time_us.cycle.segmentation", static_cast<std::int64_t>(analysis.segments_s * 1e6));
    counters_.add("time_us.cycle.edge_maps", static_cast<std::int64_t>(analysis.edge_maps_s * 1e6));
    auto rethrow = [](const std::exception_ptr& error) {
      if (error) std::rethrow_exception(error);
    };
    const bool segmented = guarded_for("segmentation_failed", scan.id(), [&] { rethrow(analysis.segments_error); });
    guarded_for("edge_maps_failed", scan.id(), [&] { rethrow(analysis.edge_maps_error); });
    publish(make_map_messages(scan, version, true, segmented, &at));
  }
  spdlog::debug("cycle {}: solved {} pixels", version, solved);
  return true;
}

void Pipeline::end_cycle(const CycleStart& c, bool published) {
  update_status();
  publisher_.publish(make_status_message(status(), scan_->id(), c.version));
  last_publish_ = std::chrono::steady_clock::now();
  last_cycle_ = last_publish_ - c.t0;
  last_cycle_cpu_ = cycle_cpu_;
  counters_.add(published ? "publish.cycles" : "publish.cycles_cancelled");
  counters_.add("time_us.cycle.total", std::chrono::duration_cast<std::chrono::microseconds>(last_cycle_).count());
  spdlog::debug("cycle {} took {:.1f} ms", c.version, std::chrono::duration<double, std::milli>(last_cycle_).count());
}

bool Pipeline::timed_cycle_work(bool final, std::int64_t version, ScanProgress at, std::optional<ScanProgress> analysis_at) {
  const auto cpu0 = science::work_cpu_time();
  bool published = true;
  guarded("publish_failed", [&] { published = cycle_work(*scan_, final, version, at, analysis_at); });
  cycle_cpu_ = science::work_cpu_time() - cpu0;
  return published;
}

void Pipeline::publish_cycle(bool final) {
  wait_analysis();
  wait_cycle();
  const auto c = begin_cycle(final);
  // A failed cycle is not retried at once (it would fail again): at the next frame or interval.
  timed_cycle_work(final, c.version, scan_->progress(), std::nullopt);
  analysis_unpublished_.reset();
  end_cycle(c, true);
}

void Pipeline::start_cycle() {
  cycle_start_ = begin_cycle(false);
  scan_->begin_staging();
  cycle_done_ = false;
  cycle_cancel_ = false;
  cycle_ = std::jthread([this, c = cycle_start_, at = scan_->progress(), analysis_at = std::exchange(analysis_unpublished_, std::nullopt)] {
    cycle_published_ = timed_cycle_work(false, c.version, at, analysis_at);
    cycle_done_ = true;
    queue_.wake();  // the pipeline commits it and starts the next one
  });
  pthread_setname_np(cycle_.native_handle(), "xanesd-cycle");
}

void Pipeline::run_cycle_here() {
  const auto c = begin_cycle(false);
  const bool published = timed_cycle_work(false, c.version, scan_->progress(), std::exchange(analysis_unpublished_, std::nullopt));
  end_cycle(c, published);
}

void Pipeline::wait_cycle() {
  if (!cycle_.joinable()) return;
  join_timed(cycle_, "time_us.pipeline.waited_for_cycle");
  counters_.add("ingest.frames_staged", static_cast<std::int64_t>(scan_->commit_staged()));
  end_cycle(cycle_start_, cycle_published_);
}

void Pipeline::refresh_finished_scan() {
  // A finished scan refitted (new references or settings): publish its new final maps and,
  // if the scan wrote a result file at stop, rewrite it so file and maps agree.
  guarded("publish_failed", [&] { publish_cycle(true); });
  if (!result_file_.empty()) {
    const auto reply = save_to(result_file_);
    if (!reply.value("ok", false)) report({"save_failed", reply.value("error", "")}, scan_->id());
  }
}

nlohmann::json Pipeline::save(const std::string& requested) {
  if (!scan_) return {{"ok", false}, {"error", "no scan to save"}};
  try {
    if (!requested.empty()) return save_to(result_path(cfg_.output.directory, requested, scan_->id()));
    const auto out = default_output(*scan_, scan_output_);
    auto reply = save_to(out);
    if (reply.value("ok", false)) scan_output_ = out;
    return reply;
  } catch (const std::invalid_argument& e) {
    counters_.add("control.rejected.path");
    return {{"ok", false}, {"code", "invalid_path"}, {"error", e.what()}};
  } catch (const std::runtime_error& e) {
    return {{"ok", false}, {"error", e.what()}};
  }
}

std::filesystem::path Pipeline::default_output(const Scan& scan, const std::filesystem::path& chosen) {
  if (!chosen.empty()) return chosen;  // this scan's own file, rewritten
  // A new scan never replaces an earlier scan's file: a reused scan_id gets <id>-2.h5, -3, …
  auto out = result_path(cfg_.output.directory, "", scan.id());
  for (int n = 2; std::filesystem::exists(std::filesystem::symlink_status(out)); ++n) {
    if (n > 9999) throw std::runtime_error("result files " + scan.id() + ".h5 to -9999.h5 exist already");
    out = result_path(cfg_.output.directory, scan.id() + "-" + std::to_string(n) + ".h5", scan.id());
  }
  if (out.filename() != scan.id() + ".h5")
    report({"scan_id_reused", "a result file for scan_id '" + scan.id() + "' exists already: this scan is written to " +
                                  out.filename().string()}, scan.id());
  return out;
}

nlohmann::json Pipeline::save_to(const std::filesystem::path& out) {
  auto reply = write_result(*scan_, out, cfg_.effective);
  if (reply.value("ok", false)) result_file_ = reply["path"].get<std::string>();
  return reply;
}

nlohmann::json Pipeline::write_result(Scan& scan, const std::filesystem::path& out, const nlohmann::json& effective) {
  try {
    scan.solve_changed(solve_threads(cfg_));
    write_result_file(out, scan, effective, counters_.to_json(), cfg_.output.save_spectra);
  } catch (const std::exception& e) {
    return {{"ok", false}, {"error", "cannot write '" + out.string() + "': " + e.what()}};
  }
  counters_.add("results.files_written");
  spdlog::info("scan {}: result file {}", scan.id(), out.string());
  return {{"ok", true}, {"path", std::filesystem::absolute(out).string()}};
}

std::vector<science::Reference> Pipeline::resolve_references(const std::vector<std::string>& items, const std::string& normalize,
                                                                const std::string& energy_unit) const {
  std::vector<science::Reference> out;
  for (const auto& item : items) {
    if (const auto lib = cfg_.references.libraries.find(item); lib != cfg_.references.libraries.end()) {  // references.libraries
      for (const auto& f : library_files(lib->first, lib->second)) {
        auto loaded = science::load_reference_file(f, science::normalize_mode_from_string(normalize),
                                                   science::energy_unit_from_string(energy_unit));
        out.insert(out.end(), loaded.begin(), loaded.end());
      }
      continue;
    }
    auto named = [&](const std::vector<science::Reference>& set) {
      return std::find_if(set.begin(), set.end(), [&](const auto& r) { return r.name == item; });
    };
    if (auto it = named(refs_); it != refs_.end()) out.push_back(*it);
    else if (auto lib = named(library_); lib != library_.end()) out.push_back(*lib);
    else if (std::error_code ec; std::filesystem::exists(item, ec)) {
      auto loaded = science::load_reference_file(item, science::normalize_mode_from_string(normalize),
                                                 science::energy_unit_from_string(energy_unit));
      out.insert(out.end(), loaded.begin(), loaded.end());
    } else {
      throw science::ReferenceError("'" + item.substr(0, 200) + "' is neither a library of references.libraries, nor a loaded reference, nor one of the start-up library, nor a file the daemon can read");
    }
  }
  for (std::size_t a = 0; a < out.size(); ++a)
    for (std::size_t b = a + 1; b < out.size(); ++b)
      if (out[a].name == out[b].name) throw science::ReferenceError("reference '" + out[a].name + "' is named twice");
  return out;
}

void Pipeline::journal_fit_state(bool wait_written) {
  if (replaying_ || !scan_ || scan_->state() != ScanState::running) return;
  nlohmann::json set = nlohmann::json::object(), refs = nlohmann::json::array();
  for (const auto& k : config_keys())
    if (k.runtime && cfg_.effective.contains(k.key)) set[k.key] = cfg_.effective[k.key];
  for (const auto& r : refs_)
    refs.push_back({{"name", r.name}, {"source", r.source}, {"energies_eV", r.energies_eV}, {"mu", r.mu}, {"column", r.column},
                    {"normalized_here", r.normalized_here}, {"e0_eV", r.e0_eV}, {"edge_step", r.edge_step},
                    {"normalization", r.normalization}});
  journal_.append_fit_state({{"set", set}, {"references", refs}}, wait_written);
  check_journal();
}

void Pipeline::apply_fit_state(const nlohmann::json& state) {
  cfg_ = reconfigure(cfg_, state.at("set"));
  if (shards_) shards_->set_config(cfg_);
  std::vector<science::Reference> refs;
  for (const auto& j : state.at("references")) {
    science::Reference r;
    r.name = j.at("name").get<std::string>(), r.source = j.at("source").get<std::string>();
    r.energies_eV = j.at("energies_eV").get<std::vector<double>>(), r.mu = j.at("mu").get<std::vector<double>>();
    r.column = j.at("column").get<std::string>(), r.normalized_here = j.at("normalized_here").get<bool>();
    r.e0_eV = j.at("e0_eV").get<double>(), r.edge_step = j.at("edge_step").get<double>();
    r.normalization = j.at("normalization").get<std::string>();
    refs.push_back(std::move(r));
  }
  set_references(std::move(refs));
  if (scan_) scan_->refit(refs_, scan_settings(cfg_));
  changed_since_publish_ = scan_ != nullptr;
  update_status();
}

void Pipeline::set_references(std::vector<science::Reference> refs) {
  refs_ = std::move(refs);
  nlohmann::json files = nlohmann::json::array();
  for (const auto& r : refs_)
    if (std::find(files.begin(), files.end(), r.source) == files.end()) files.push_back(r.source);
  cfg_.effective["references.files"] = files;
  for (const auto& r : refs_) spdlog::info("reference '{}' from {} ({}): {}", r.name, r.source, r.column, r.normalization);
}

nlohmann::json Pipeline::handle(const protocol::ControlRequest& request) {
  const auto& cmd = request.cmd;
  if (cmd == "save") return save(std::get<protocol::SaveArgs>(request.args).path);
  if (cmd == "abort") {
    if (!scan_ || scan_->state() != ScanState::running) return {{"ok", false}, {"error", "no scan is running"}};
    scan_->abort("aborted by control request");
    protocol::StopMsg aborted;  // replayed as a stop with reason aborted
    aborted.scan_id = scan_->id(), aborted.reason = "aborted";
    journal_.append(aborted), check_journal();
    finish_scan(cfg_.output.write_on_stop);
    return {{"ok", true}, {"scan_id", scan_->id()}};
  }
  if (cmd == "configure") {
    cfg_ = reconfigure(cfg_, std::get<protocol::ConfigureArgs>(request.args).set);
    if (shards_) shards_->set_config(cfg_);
    // A finished scan at another edge than the loaded references (loaded for the next scan)
    // keeps its fit: it is refitted only with references that cover it.
    bool refit = scan_ != nullptr;
    if (scan_ && scan_->state() != ScanState::running) {
      try {
        science::resample(refs_, scan_->energies(), cfg_.references.margin_eV);
      } catch (const science::ReferenceError&) {
        refit = false;
      }
    }
    if (refit) scan_->refit(refs_, scan_settings(cfg_));
    changed_since_publish_ = refit;
    if (refit && scan_->state() != ScanState::running) refresh_finished_scan();
    journal_fit_state();
    update_status();
    return {{"ok", true}, {"config", cfg_.effective}};
  }
  if (cmd == "load_references") {
    const auto& req = std::get<protocol::LoadReferencesArgs>(request.args);
    std::vector<science::Reference> refs;
    if (req.cluster) {  // reference-free fallback: a domain's own mean spectrum joins the loaded set
      if (!scan_) return {{"ok", false}, {"error", "load_references from a cluster needs a scan"}};
      refs = refs_;
      refs.push_back(scan_->cluster_reference(static_cast<int>(*req.cluster), req.name));
      for (std::size_t k = 0; k + 1 < refs.size(); ++k)
        if (refs[k].name == refs.back().name) return {{"ok", false}, {"error", "a reference named '" + refs.back().name + "' is loaded already"}};
    } else {
      for (const auto& p : req.files) {  // files only here: a name is not a file
        auto loaded = science::load_reference_file(p, science::normalize_mode_from_string(req.normalize.value_or(cfg_.references.normalize)),
                                                   science::energy_unit_from_string(req.energy_unit.value_or(cfg_.references.energy_unit)));
        refs.insert(refs.end(), loaded.begin(), loaded.end());
      }
    }
    if (req.names) {  // keep only the named spectra, in the order given
      std::vector<science::Reference> picked;
      for (const auto& n : *req.names) {
        auto it = std::find_if(refs.begin(), refs.end(), [&](const auto& r) { return r.name == n; });
        if (it == refs.end()) return {{"ok", false}, {"error", "no reference named '" + n + "' in the files"}};
        picked.push_back(*it);
      }
      refs = std::move(picked);
    }
    // A running scan must be covered (else refused: the old set stays). A finished scan is
    // refitted if covered; if not (references for the next scan, at another edge) the set is
    // taken for the next scan and the finished one keeps its fit.
    bool refit = scan_ != nullptr;
    std::string note;
    if (scan_ && scan_->state() == ScanState::running) {
      science::resample(refs, scan_->energies(), cfg_.references.margin_eV);  // throws: refuse, keep the old set
    } else if (scan_) {
      try {
        science::resample(refs, scan_->energies(), cfg_.references.margin_eV);
      } catch (const science::ReferenceError& e) {
        refit = false;
        note = std::string("loaded for the next scan; the last scan '") + scan_->id() + "' keeps its fit (" + e.what() + ")";
      }
    }
    set_references(std::move(refs));
    if (refit) {
      scan_->refit(refs_, scan_settings(cfg_));
      if (scan_->state() == ScanState::running) changed_since_publish_ = true;
      else refresh_finished_scan();
    }
    journal_fit_state();
    update_status();
    nlohmann::json names = nlohmann::json::array(), ranges = nlohmann::json::array(), normalized = nlohmann::json::array();
    for (const auto& r : refs_) {
      names.push_back(r.name);
      ranges.push_back({r.energies_eV.front(), r.energies_eV.back()});
      if (r.normalized_here) normalized.push_back(r.name);
    }
    nlohmann::json normalization = nlohmann::json::object();
    for (const auto& r : refs_) normalization[r.name] = r.normalization;
    nlohmann::json reply = {{"ok", true}, {"reference_names", names}, {"energy_range_eV", ranges}, {"normalized_here", normalized},
                            {"normalization", normalization}, {"refitted", refit}};
    if (!note.empty()) reply["note"] = note;
    return reply;
  }
  if (cmd == "pixel") return pixel_request(std::get<protocol::PixelArgs>(request.args), scan_.get(), version_);
  if (cmd == "select_energies") {
    if (scan_) scan_->solve_changed(solve_threads(cfg_));  // select on current maps (in_use, noise)
    auto reply = select_energies_request(std::get<protocol::SelectEnergiesArgs>(request.args), refs_, scan_.get(), cfg_);
    if (reply.value("ok", false)) {
      publisher_.publish(make_energies_message(reply, ++energies_version_));
      counters_.add("control.energy_selections");
    }
    return reply;
  }
  return {{"ok", false}, {"error", "unknown command '" + cmd + "'"}};
}

}  // namespace xanesd
