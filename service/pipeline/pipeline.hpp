// The pipeline thread: the one owner of the scan. It takes decoded messages from the ingest
// queue in order, folds frames into the spectral store and the incremental fit, publishes
// map cycles at the configured rate, writes result files, and serves the control commands
// that need scan state. Nothing else touches a Scan, so it needs no lock.
#pragma once

#include <atomic>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>

#include "config/config.hpp"
#include "parallel/shards.hpp"
#include "ingest/receiver.hpp"
#include "common/counters.hpp"
#include "publish/publisher.hpp"
#include "scan/scan.hpp"
#include "science/references.hpp"
#include "store/journal.hpp"
#include "xanesd/protocol/control.hpp"

namespace xanesd {

class Pipeline {
 public:
  // `shards`: rank 0 of a live MPI job (README "Live sharding"): every scan's fit is folded and
  // solved by the ranks' row blocks; null in one process.
  Pipeline(Config cfg, std::vector<science::Reference> refs, IngestQueue& queue, Publisher& publisher,
           Counters& counters, std::unique_ptr<parallel::FitShards> shards = nullptr);
  ~Pipeline();
  void start();

  // Where a submitted command is. The control server moves a command whose request timed out
  // from queued to cancelled (it never runs) or from running to abandoned (its outcome is
  // reported on the errors topic as late_reply when it completes): never silently run later.
  enum class CommandState : int { queued, running, done, cancelled, abandoned };
  struct Ticket {
    std::future<nlohmann::json> reply;
    std::shared_ptr<std::atomic<CommandState>> state;
  };
  // Runs a command that needs scan state (configure, load_references, save, abort,
  // select_energies) on the pipeline thread; the future holds the JSON reply.
  // The request was parsed (ControlRequest::parse) by the caller: handlers read typed fields.
  Ticket submit(protocol::ControlRequest request);
  // Counts an issue, logs it and publishes it on the errors topic. Any thread.
  void report(const Issue& issue, const std::string& scan_id);
  // Daemon state for `status`: the scan summary as of the last update, plus config. Any thread.
  nlohmann::json status() const;

 private:
  struct Command {
    protocol::ControlRequest request;
    std::promise<nlohmann::json> reply;
    std::shared_ptr<std::atomic<CommandState>> state = std::make_shared<std::atomic<CommandState>>(CommandState::queued);
  };
  void run_command(Command& c, std::stop_token stop);
  void run(std::stop_token stop);
  // At start-up, before any thread runs: replays the scan journal the last process left
  // (kill -9, power cut) through on_message, and reports what it recovered.
  void recover_journal();
  // Reports a journal write failure once (the scan goes on without crash safety).
  void check_journal();
  void on_message(IngestMessage&& msg);
  void on_start(protocol::StartMsg&& s);
  // scan_too_large when a scan shaped as `s` with `energies` planned energies would exceed
  // ingest.max_scan_GiB (store, fit statistics, XRF, count scales), checked before allocating.
  std::optional<Issue> budget_issue(const protocol::StartMsg& s, std::size_t energies) const;
  void on_frame(protocol::FrameMsg&& f);
  void on_stop(protocol::StopMsg&& s);
  // The final cycle and the result file of a scan that stopped, here (abort, the journal's
  // replay, live sharding: its solve is an MPI operation only this thread makes).
  void finish_scan(bool write_file);
  // The same on the finisher thread, after a stop: the next scan's start and frames go on beside
  // it (README "How it fits together"), so the first frames of a scan do not wait for the last one's
  // reference selection, segmentation, edge maps and file. Anything else that touches the
  // finishing scan, and every command, waits for it (wait_finish).
  void start_finish(bool write_file);
  // Whether the start `s` may begin beside the running finish: a new scan (not an extension of
  // the finishing one, nor its scan_id) whose memory and the finishing scan's together fit in
  // ingest.beside_finish_MiB and ingest.max_scan_GiB. Otherwise it waits for the finish, as
  // every other message does.
  bool starts_beside_finish(const protocol::StartMsg& s) const;
  // Joins the finisher if one runs and takes what it wrote.
  void wait_finish();
  // Runs one step of the pipeline's loop (a publication cycle, a segmentation, a save …): an
  // exception becomes an issue `code` on the errors topic and a counter, never std::terminate.
  // Returns false when the step threw.
  bool guarded(const char* code, const std::function<void()>& step);
  bool guarded_for(const char* code, const std::string& scan_id, const std::function<void()>& step);  // reported for scan_id
  // A publication cycle run to its end on the pipeline thread (final maps, refits).
  void publish_cycle(bool final);
  // A live cycle on its own thread (cycle_): ingest goes on staging frames meanwhile.
  void start_cycle();
  // Whether a live cycle waits to run (frames since the last one, none running), when it may,
  // and how long the pipeline may wait for a message before that (at most 10 ms).
  bool cycle_pending() const;
  std::chrono::steady_clock::time_point next_cycle_due() const;
  std::chrono::steady_clock::duration until_next_cycle() const;
  // A live cycle on this thread (live sharding: its solve is an MPI operation, which only this
  // thread makes): ingest waits for it, the analysis goes on beside it.
  void run_cycle_here();
  // Joins the live cycle if one runs, commits the frames staged during it and publishes the
  // status; everything but a staged frame calls this before it touches the scan.
  void wait_cycle();
  // What a cycle does with the scan, on whichever thread runs it: the fold of pending planes,
  // the solve and the fit's map messages (stamped with `at`), the analysis's products when
  // there are new ones (stamped with what it saw, `analysis_at`); when `final`, then the reference selection, segmentation and edge maps
  // (live, the analysis thread does the first two) and the final maps. It touches nothing a
  // staged frame does. Returns false when a live cycle was cancelled (by a stop) after its
  // solve, with nothing published.
  bool cycle_work(Scan& scan, bool final, std::int64_t version, ScanProgress at, std::optional<ScanProgress> analysis_at);
  // cycle_work on scan_ with its failures reported (guarded), recording the CPU time it used on
  // every thread in cycle_cpu_ (the next cycle's pacing). False when cancelled; a cycle that
  // threw counts as published (not retried at once: it would fail again).
  bool timed_cycle_work(bool final, std::int64_t version, ScanProgress at, std::optional<ScanProgress> analysis_at);
  // The image-level analysis of a running scan (Scan::Analysis: the reference selection and
  // the segmentation) on its own thread, at most every segment.interval_ms: the fit's cycles
  // and ingest go on meanwhile, so the fit maps' latency is the fold and solve's alone.
  void start_analysis();
  bool analysis_due() const;
  // Joins the analysis if one runs, then (after the live cycle, if one runs) commits it to the
  // scan; what it refreshed (segments, the selection, the maps of a refit) goes out with the
  // next cycle.
  void wait_analysis();
  // Joins `thread`, adding the microseconds the pipeline waited to `counter`.
  void join_timed(std::jthread& thread, const char* counter);
  // The pipeline thread's part of a cycle, before and after cycle_work.
  struct CycleStart {
    std::int64_t version;
    std::chrono::steady_clock::time_point t0;
  };
  CycleStart begin_cycle(bool final);
  void end_cycle(const CycleStart& c, bool published);
  void update_status();
  nlohmann::json scan_summary(const Scan& scan) const;  // the scan's summary with the memory around it
  nlohmann::json handle(const protocol::ControlRequest& request);
  // `save`: a path relative to output.directory (empty: <scan_id>.h5), refused outside it.
  nlohmann::json save(const std::string& requested);
  nlohmann::json save_to(const std::filesystem::path& out);
  // Where a scan's result file goes when no path is asked for: the file it chose at its first
  // write (`chosen`), else <scan_id>.h5, or <scan_id>-N.h5 when an earlier scan's file has that
  // name (reported). Throws std::runtime_error when even -9999 is taken.
  std::filesystem::path default_output(const Scan& scan, const std::filesystem::path& chosen);
  // Writes `scan`'s result file at `out`: the reply `save` gives. Any thread: it touches no
  // pipeline state but the counters.
  nlohmann::json write_result(Scan& scan, const std::filesystem::path& out, const nlohmann::json& effective);
  void refresh_finished_scan();
  // The references `items` name: each a loaded reference, one of the start-up library, or a
  // reference file (all its spectra). Throws science::ReferenceError naming what was not found.
  std::vector<science::Reference> resolve_references(const std::vector<std::string>& items, const std::string& normalize,
                                                     const std::string& energy_unit) const;
  // Makes `refs` the loaded set and records where they came from in the effective config
  // (references.files), so status, replies and result files say what is fitted.
  void set_references(std::vector<science::Reference> refs);
  // The running scan's fit state (runtime config keys, loaded references) into its journal:
  // after its start and after each configure / load_references while it runs.
  void journal_fit_state(bool wait_written = true);  // false: returns before it is written
  // Replays such a record: the recovered scan is fitted with what it was fitted with before.
  void apply_fit_state(const nlohmann::json& state);

  Config cfg_;
  std::unique_ptr<parallel::FitShards> shards_;  // declared before the threads: outlives them
  std::vector<science::Reference> refs_;
  std::vector<science::Reference> library_;  // the start-up set (references.files), for names in start
  std::filesystem::path scan_output_;        // the result file scan_ writes at stop (chosen at its first write)
  IngestQueue& queue_;
  Publisher& publisher_;
  Counters& counters_;
  Journal journal_;
  bool replaying_ = false;       // recover_journal is feeding the journal back: nothing is journaled or re-reported
  nlohmann::json recovery_ = nullptr;  // what recover_journal found, for status
  std::unique_ptr<Scan> scan_;  // the running scan, or the last one (for save)
  std::int64_t version_ = 0;
  std::string result_file_;  // last result file written for scan_, for status
  std::string output_error_;  // why output.directory cannot take result files (checked at start-up), or empty
  bool changed_since_publish_ = false;
  std::chrono::steady_clock::time_point last_publish_{};
  std::chrono::steady_clock::duration last_cycle_{};  // how long the last publication cycle took
  std::chrono::nanoseconds last_cycle_cpu_{};          // and its CPU time, over every thread it used
  std::chrono::nanoseconds cycle_cpu_{};               // the running live cycle's, set by its thread
  std::atomic<std::int64_t> error_version_{0};
  std::int64_t energies_version_ = 0;  // energy selections published since start
  std::chrono::steady_clock::time_point last_analysis_{};  // when the current scan's last analysis began
  std::chrono::steady_clock::time_point next_analysis_{};  // not before (analysis_due)
  std::int64_t analysed_frames_ = -1;  // frames applied when it began: with no new frame, no new analysis

  static constexpr int kLogLinesPerSecond = 20;
  std::mutex log_mutex_;  // guards the log rate limit below (report runs on any thread)
  std::chrono::steady_clock::time_point log_window_{};
  int log_lines_ = 0;
  std::int64_t log_suppressed_ = 0;
  std::mutex commands_mutex_;  // guards commands_
  std::deque<std::shared_ptr<Command>> commands_;
  mutable std::mutex status_mutex_;  // guards status_
  nlohmann::json status_;
  std::jthread cycle_;                   // the running live cycle, if joinable
  std::atomic<bool> cycle_done_{false};  // cycle_ has finished its work (join it)
  std::atomic<bool> cycle_cancel_{false};  // a stop came: cycle_ publishes nothing after its solve
  bool cycle_published_ = true;            // written by cycle_, read after joining it
  CycleStart cycle_start_{};
  std::jthread analysis_;                   // the running analysis, if joinable
  std::atomic<bool> analysis_done_{false};  // analysis_ has finished its work (join it)
  std::atomic<bool> analysis_cancel_{false};  // a stop came: analysis_ stops after its current step
  std::optional<Scan::Analysis> analysis_job_;  // its inputs and results
  std::optional<ScanProgress> analysis_unpublished_;  // committed, its products not yet published: what it saw
  // The finisher (start_finish) and what it hands back (wait_finish).
  struct Finish {
    Scan* scan = nullptr;          // the scan it finishes: scan_, until a newer scan takes its place
    std::unique_ptr<Scan> owned;   // the scan, once a newer one is in scan_
    std::filesystem::path output;  // in: the scan's chosen file (scan_output_); out: the file written
    std::string result_file;       // in: result_file_; out: the file written
    double bytes = 0;              // what the scan holds (status scan.memory.bytes)
  };
  Finish finish_;
  std::jthread finisher_;
  std::atomic<bool> finisher_done_{false};  // finisher_ has finished its work (join it)
  bool finish_superseded_ = false;  // guarded by status_mutex_: a newer scan's status is status_
  Scan::Buffers spare_buffers_;     // a finished scan's buffers, for the next start beside a finish
  std::jthread thread_;
};

}  // namespace xanesd
