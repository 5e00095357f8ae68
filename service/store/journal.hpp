// The scan journal: every ingest message the pipeline accepted (start, extension, frame, stop)
// and the fit state it was fitted with (config, references), appended in the order it was
// applied, so that a daemon killed mid-scan (kill -9, OOM, a
// power cut) reopens the scan at restart by replaying it through the same code.
//
// Durability policy (README "Crash-safe scans"): a frame is acknowledged (counted in
// `journal.last_seq` of status) once its record has been write(2)n to the journal file, i.e.
// is in the kernel's page cache: it survives any crash of the process. fdatasync runs every
// journal.fsync_ms on a background thread (0: after every record, before it is acknowledged),
// so a power cut loses at most the frames acknowledged in that last interval. A torn or
// corrupt tail (CRC-32 per record) is cut off at recovery and reported.
//
// Records are written by a writer thread (journal.queue_MiB > 0): append queues the encoded
// record (a frame's arrays move in, nothing is copied) and returns, so checksum and write(2)
// (half the pipeline's time per 2048² frame) overlap the next frame's work. A full queue makes
// append wait. A frame applied but not yet written is not acknowledged: after a crash the
// sender resends from journal.last_seq + 1, as for a frame still in flight. An extension and a
// command's fit state are written before their append returns: a control command's change is
// in the journal when it is answered. A scan's start (its new journal file, synced, renamed
// into place) and stop (synced) go through the writer too, in order with the records, so the
// pipeline goes on with the next message meanwhile (they took 3–5 ms each on its thread); not
// yet written when the process dies, they are lost as an unacknowledged frame is, and the
// sender's resume (status.journal) sends them again.
//
// One journal at a time, `<journal.directory>/scan.journal`: a new scan's start replaces the
// last scan's journal atomically (rename), or keeps it as scan.journal.finishing while that
// scan's result file is still being written beside the new scan. A lock file keeps two daemons
// out of one folder.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <zmq.hpp>

#include "config/config.hpp"
#include "xanesd/protocol/messages.hpp"

namespace xanesd {

class Journal {
 public:
  // Creates the folder and takes its lock; throws std::runtime_error saying why it cannot.
  explicit Journal(JournalConfig settings);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  bool enabled() const { return settings_.enabled; }

  struct Recovery {
    bool found = false;               // a journal was left by the previous process
    std::int64_t records = 0, frames = 0;
    std::uint64_t bytes = 0;          // intact records kept
    std::uint64_t truncated_bytes = 0;  // torn or corrupt tail cut off
    std::string error;                // why the tail was cut (empty: the file ended cleanly)
  };
  // Reads the journal the previous process left, calling `replay` with each intact record's
  // message parts in order; cuts off a torn tail and keeps appending after the last good
  // record. Call once, before any append.
  Recovery recover(const std::function<void(std::vector<zmq::message_t>&&)>& replay);

  // A new scan: its journal replaces the previous one (atomically) and starts with `start`,
  // after every record queued before it (on the writer thread). keep_last: the last scan is
  // still finishing (its final maps and result file beside the new scan): its journal is kept
  // as scan.journal.finishing until release_finishing, and a recovery replays it first.
  void begin(const protocol::StartMsg& start, bool keep_last = false);
  // The finishing scan's result file is written (or it has none to write): its journal goes
  // (after the begin that kept it, in the writer's order).
  void release_finishing();
  // Appends to the current scan's journal. `frame` is consumed (its arrays move into the write).
  void append(const protocol::StartMsg& extension);
  void append(protocol::FrameMsg&& frame);
  void append(const protocol::StopMsg& stop);
  // What the scan is fitted with (runtime config and loaded references), recorded after the
  // start and after each configure / load_references while the scan runs, so a recovered scan
  // is fitted as before the crash. Replayed as a record whose first part is kFitStateTopic and
  // whose second is the state as msgpack.
  static constexpr std::string_view kFitStateTopic = "xanesd/fit_state";
  // wait_written: returns once it is in the file (a command's change, before it is answered).
  void append_fit_state(const nlohmann::json& state, bool wait_written = true);

  // Live figures for status: scan_id, frames, last_seq (the last acknowledged frame), bytes,
  // synced_bytes, fsync_ms, path, write_seconds (time writing records), queued_records and
  // queued_bytes (waiting for the writer), error (a failed write disables the journal for the
  // scan).
  nlohmann::json stats() const;
  // Empty, or why the journal stopped writing (reported once on the errors topic).
  std::string take_new_error();
  // Waits until every queued record is written (a new scan, shutdown; tests).
  void drain();

 private:
  // A record on its way to the file: what write_record takes, and what to do once it is written.
  struct Pending {
    std::vector<zmq::message_t> parts;
    std::optional<std::int64_t> frame_seq;
    bool resets_seq = false;   // an extension: its frames number from 0 again
    bool sync_after = false;   // a stop: fdatasync once per scan
    std::size_t bytes = 0;
    // A record, or one of the file changes that must come in order with the records: a new
    // scan's journal (begin: parts hold its start), the finishing scan's journal removed.
    enum class Kind { record, begin, release_finishing } kind = Kind::record;
    bool keep_last = false;  // begin's
    std::string scan_id;     // begin's
  };
  void submit(Pending&& p);  // to the writer thread, or written now without one
  void write_pending(Pending& p);
  void open_new_journal(const std::string& scan_id, std::vector<zmq::message_t>&& start, bool keep_last);  // begin, on the writer
  void remove_finishing();  // release_finishing, on the writer
  void writer_loop(std::stop_token stop);
  void write_record(std::vector<zmq::message_t>&& parts, std::optional<std::int64_t> frame_seq);
  void note_recovered(const std::vector<zmq::message_t>& parts, Recovery& r);
  std::filesystem::path finishing_path() const;
  // Replays one journal file's intact records into `r`; returns the end of the last one.
  std::uint64_t replay_file(const std::filesystem::path& path, const std::function<void(std::vector<zmq::message_t>&&)>& replay,
                            Recovery& r);
  void open_for_append(const std::filesystem::path& path, std::uint64_t size);
  void fail(const std::string& why);
  void sync_loop(std::stop_token stop);

  JournalConfig settings_;
  std::filesystem::path path_;
  int lock_fd_ = -1;
  int fd_ = -1;  // the current journal, or -1
  mutable std::mutex mutex_;  // guards fd_ and the figures below against the sync thread and status
  std::string scan_id_, error_;
  bool error_new_ = false;
  bool unusable_ = false;  // the folder could not be made or locked: no journal at all
  std::int64_t frames_ = 0, last_seq_ = -1;
  std::uint64_t bytes_ = 0, synced_bytes_ = 0;
  double write_seconds_ = 0;  // pipeline-thread time in write_record (CRC, write, fdatasync when fsync_ms = 0)
  std::condition_variable_any sync_cv_;
  std::jthread sync_thread_;

  mutable std::mutex queue_mutex_;  // guards queue_, queued_bytes_, writing_
  std::condition_variable_any queue_cv_;  // the writer waits for records; append for room; drain for the end
  std::deque<Pending> queue_;
  std::size_t queued_bytes_ = 0;
  bool writing_ = false;  // the writer holds a record it took off the queue
  std::jthread writer_thread_;
};

}  // namespace xanesd
