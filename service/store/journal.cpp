#include "store/journal.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace xanesd {

namespace {

constexpr char kFileMagic[8] = {'X', 'J', 'O', 'U', 'R', 'N', 'L', '1'};
constexpr std::uint32_t kRecordMagic = 0x4A524543;  // "CERJ" little-endian
constexpr std::uint32_t kMaxParts = 64;              // a message has topic, header and at most a few arrays

// What precedes each record's part-size table and parts. Fixed layout, native (little-endian) order.
struct RecordHeader {
  std::uint32_t magic = kRecordMagic;
  std::uint32_t parts = 0;
  std::uint64_t payload = 0;     // bytes after this header: the size table (8 per part) and the parts
  std::uint32_t payload_crc = 0;  // CRC-32 of the payload
  std::uint32_t header_crc = 0;   // CRC-32 of the 20 bytes before it: a garbage size is never trusted
};
static_assert(sizeof(RecordHeader) == 24);

std::uint32_t crc(std::uint32_t c, const void* p, std::size_t n) {
  const auto* b = static_cast<const Bytef*>(p);
  while (n > 0) {  // zlib takes uInt lengths
    const auto chunk = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
    c = static_cast<std::uint32_t>(crc32(c, b, chunk));
    b += chunk, n -= chunk;
  }
  return c;
}

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

// write(2) everything, across partial writes and EINTR.
void write_all(int fd, std::vector<iovec> iov) {
  std::size_t first = 0;
  while (first < iov.size()) {
    const auto n = ::writev(fd, iov.data() + first, static_cast<int>(std::min<std::size_t>(iov.size() - first, IOV_MAX)));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(errno_text("journal write"));
    }
    auto left = static_cast<std::size_t>(n);
    while (first < iov.size() && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (first < iov.size()) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
}

bool read_all(int fd, void* p, std::size_t n) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    const auto r = ::read(fd, b, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    b += r, n -= static_cast<std::size_t>(r);
  }
  return true;
}

void sync_directory(const std::filesystem::path& dir) {
  const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d >= 0) {
    (void)::fsync(d);  // makes a rename durable; best effort
    ::close(d);
  }
}

std::optional<protocol::Array> copy(const std::optional<protocol::Array>& a) {
  if (!a) return std::nullopt;
  return protocol::Array(a->name(), a->dtype(), a->shape(), a->little_endian(), zmq::message_t(a->bytes(), a->nbytes()));
}

// The pipeline keeps its StartMsg (the scan owns it); the journal encodes a copy.
std::vector<zmq::message_t> encode_copy(const protocol::StartMsg& s) {
  protocol::StartMsg c;
  c.scan_id = s.scan_id, c.rows = s.rows, c.cols = s.cols, c.energies_eV = s.energies_eV, c.mode = s.mode, c.order = s.order;
  c.xrf_channels = s.xrf_channels, c.extend = s.extend, c.dark = copy(s.dark), c.flat = copy(s.flat);
  return protocol::encode(std::move(c).to_wire());
}

}  // namespace

Journal::Journal(JournalConfig settings) : settings_(std::move(settings)) {
  if (!settings_.enabled) return;
  path_ = settings_.directory / "scan.journal";
  // An unusable folder (like an unwritable output.directory) does not stop the daemon: it runs
  // without crash safety and says so (log, status journal.error, errors topic at each start).
  std::error_code ec;
  std::filesystem::create_directories(settings_.directory, ec);
  const auto lock = settings_.directory / "lock";
  if (!ec) lock_fd_ = ::open(lock.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (ec || lock_fd_ < 0) {
    error_ = "journal.directory '" + settings_.directory.string() + "' is not usable: " + (ec ? ec.message() : std::strerror(errno));
    settings_.enabled = false;
    unusable_ = true;
    return;
  }
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0)
    throw ConfigError("journal.directory '" + settings_.directory.string() +
                             "' is in use by another xanesd (each daemon needs its own output.directory or journal.directory)");
  if (settings_.fsync_ms > 0) sync_thread_ = std::jthread([this](std::stop_token st) { sync_loop(st); });
  if (settings_.queue_bytes > 0) writer_thread_ = std::jthread([this](std::stop_token st) { writer_loop(st); });
}

Journal::~Journal() {
  if (writer_thread_.joinable()) {  // what was queued is written first: a clean exit loses nothing
    drain();
    writer_thread_.request_stop();
    queue_cv_.notify_all();
    writer_thread_.join();
  }
  if (sync_thread_.joinable()) {
    sync_thread_.request_stop();
    sync_cv_.notify_all();
    sync_thread_.join();
  }
  if (fd_ >= 0) ::close(fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock
}

void Journal::sync_loop(std::stop_token stop) {
  std::unique_lock lock(mutex_);
  while (!stop.stop_requested()) {
    sync_cv_.wait_for(lock, stop, std::chrono::milliseconds(settings_.fsync_ms), [] { return false; });
    if (fd_ < 0 || synced_bytes_ == bytes_) continue;
    // fdatasync outside the lock, on a duplicate: the pipeline keeps appending meanwhile, and
    // a new scan may close fd_ without pulling the descriptor from under the sync.
    const int fd = ::dup(fd_);
    const auto target = bytes_;
    const auto id = scan_id_;
    lock.unlock();
    const bool ok = fd >= 0 && ::fdatasync(fd) == 0;
    if (fd >= 0) ::close(fd);
    lock.lock();
    if (ok && scan_id_ == id && target > synced_bytes_) synced_bytes_ = target;
  }
}

Journal::Recovery Journal::recover(const std::function<void(std::vector<zmq::message_t>&&)>& replay) {
  Recovery r;
  if (!settings_.enabled) return r;
  // A scan that was still writing its result file beside the next scan's start: first, so its
  // stop (replayed) writes that file before the next scan replaces it as the current scan.
  const auto finishing = finishing_path();
  if (std::filesystem::exists(finishing)) {
    r.found = true;
    replay_file(finishing, replay, r);
    std::filesystem::remove(finishing);
  }
  if (!std::filesystem::exists(path_)) return r;  // no journal: nothing (more) to recover
  r.found = true;
  const auto good = replay_file(path_, replay, r);
  if (good < sizeof kFileMagic) {
    std::filesystem::remove(path_);  // nothing usable: the next scan starts a fresh journal
    return r;
  }
  open_for_append(path_, good);
  return r;
}

std::filesystem::path Journal::finishing_path() const { return settings_.directory / "scan.journal.finishing"; }

std::uint64_t Journal::replay_file(const std::filesystem::path& path, const std::function<void(std::vector<zmq::message_t>&&)>& replay,
                                   Recovery& r) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  std::uint64_t good = 0;  // end of the last intact record
  char magic[sizeof(kFileMagic)];
  if (!read_all(fd, magic, sizeof magic) || std::memcmp(magic, kFileMagic, sizeof magic) != 0) {
    r.error = "not a journal file (bad magic)";
  } else {
    good = sizeof kFileMagic;
    const auto file_size = static_cast<std::uint64_t>(::lseek(fd, 0, SEEK_END));
    ::lseek(fd, static_cast<off_t>(good), SEEK_SET);
    while (good < file_size) {
      RecordHeader h;
      if (!read_all(fd, &h, sizeof h)) { r.error = "torn record header"; break; }
      if (h.magic != kRecordMagic || h.header_crc != crc(0, &h, offsetof(RecordHeader, header_crc))) { r.error = "corrupt record header"; break; }
      if (h.parts < 2 || h.parts > kMaxParts || h.payload > file_size - good - sizeof h || h.payload < 8ull * h.parts) {
        r.error = h.payload > file_size - good - sizeof h ? "torn record (file ends inside it)" : "corrupt record header";
        break;
      }
      std::vector<std::uint64_t> sizes(h.parts);
      if (!read_all(fd, sizes.data(), 8 * sizes.size())) { r.error = "torn record"; break; }
      std::uint64_t total = 8ull * h.parts;
      bool sane = true;
      for (auto s : sizes) sane = sane && s <= h.payload && (total += s) <= h.payload;
      if (!sane || total != h.payload) { r.error = "corrupt record (part sizes)"; break; }
      std::uint32_t c = crc(0, sizes.data(), 8 * sizes.size());
      std::vector<zmq::message_t> parts;
      bool complete = true;
      for (auto s : sizes) {
        zmq::message_t m(static_cast<std::size_t>(s));
        if (!read_all(fd, m.data(), m.size())) { complete = false; break; }
        c = crc(c, m.data(), m.size());
        parts.push_back(std::move(m));
      }
      if (!complete) { r.error = "torn record"; break; }
      if (c != h.payload_crc) { r.error = "record checksum mismatch"; break; }
      good += sizeof h + h.payload;
      ++r.records;
      note_recovered(parts, r);
      replay(std::move(parts));
    }
    if (r.error.empty() && good < file_size) r.error = "trailing bytes";
    r.truncated_bytes += file_size > good ? file_size - good : 0;
  }
  ::close(fd);
  r.bytes += good;
  return good;
}

void Journal::note_recovered(const std::vector<zmq::message_t>& parts, Recovery& r) {
  // The live figures continue from the journal's own records (they were all accepted).
  const auto topic = parts[0].to_string_view();
  if (topic != "frame" && topic != "start") return;
  nlohmann::json header;
  try {
    header = protocol::decode_header(parts[1].data(), parts[1].size());
  } catch (const std::exception&) {
    return;  // the pipeline's parser reports it
  }
  std::lock_guard lock(mutex_);
  if (topic == "start") {  // an extension's frames number from 0 again
    if (!header.value("extend", false)) scan_id_ = header.value("scan_id", ""), frames_ = 0;
    last_seq_ = -1;
  } else if (topic == "frame") {
    ++r.frames, ++frames_;
    if (header.contains("seq") && header["seq"].is_number_integer()) last_seq_ = header["seq"].get<std::int64_t>();
  }
}

void Journal::open_for_append(const std::filesystem::path& path, std::uint64_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fail(errno_text("cannot reopen the journal"));
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0 || ::lseek(fd, static_cast<off_t>(size), SEEK_SET) < 0) {
    ::close(fd);
    return fail(errno_text("cannot cut the journal's torn tail"));
  }
  std::lock_guard lock(mutex_);
  fd_ = fd;
  bytes_ = size;
  synced_bytes_ = 0;
}

namespace {
std::size_t total_bytes(const std::vector<zmq::message_t>& parts) {
  std::size_t n = 0;
  for (const auto& p : parts) n += p.size();
  return n;
}
}  // namespace

void Journal::submit(Pending&& p) {
  if (!writer_thread_.joinable()) return write_pending(p);
  std::unique_lock lock(queue_mutex_);
  // Room for it, or an empty queue (one record larger than the limit still goes).
  queue_cv_.wait(lock, [&] { return queue_.empty() || queued_bytes_ + p.bytes <= settings_.queue_bytes; });
  queued_bytes_ += p.bytes;
  queue_.push_back(std::move(p));
  queue_cv_.notify_all();
}

void Journal::write_pending(Pending& p) {
  if (p.kind == Pending::Kind::begin) return open_new_journal(p.scan_id, std::move(p.parts), p.keep_last);
  if (p.kind == Pending::Kind::release_finishing) return remove_finishing();
  write_record(std::move(p.parts), p.frame_seq);
  int sync_fd = -1;
  {
    std::lock_guard lock(mutex_);
    if (p.resets_seq) last_seq_ = -1;
    if (p.sync_after && settings_.fsync_ms >= 0) sync_fd = fd_;
  }
  // Once per scan, outside the lock so status is not held up. Only this thread closes fd_ (a
  // new scan's journal is opened here too, in its turn), so it stays open meanwhile.
  if (sync_fd >= 0) (void)::fdatasync(sync_fd);
}

void Journal::writer_loop(std::stop_token stop) {
  std::unique_lock lock(queue_mutex_);
  while (true) {
    queue_cv_.wait(lock, stop, [&] { return !queue_.empty(); });
    if (queue_.empty()) return;  // stopped (the destructor drained the queue first)
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    lock.unlock();
    write_pending(p);
    const std::size_t bytes = p.bytes;
    p = Pending{};  // the frame's buffers are freed before the queue says there is room
    lock.lock();
    queued_bytes_ -= bytes;
    writing_ = false;
    queue_cv_.notify_all();
  }
}

void Journal::drain() {
  if (!writer_thread_.joinable()) return;
  std::unique_lock lock(queue_mutex_);
  queue_cv_.wait(lock, [&] { return queue_.empty() && !writing_; });
}

void Journal::release_finishing() {
  if (!settings_.enabled) return;
  Pending p;
  p.kind = Pending::Kind::release_finishing;
  submit(std::move(p));
}

void Journal::remove_finishing() {
  std::error_code ec;
  if (std::filesystem::remove(finishing_path(), ec) && settings_.fsync_ms >= 0) sync_directory(settings_.directory);
}

void Journal::begin(const protocol::StartMsg& start, bool keep_last) {
  if (unusable_) {
    std::lock_guard lock(mutex_);
    error_new_ = true;  // each scan that starts without crash safety says so
  }
  if (!settings_.enabled) return;
  // Queued behind the last scan's records, which so go to the last scan's journal.
  Pending p{encode_copy(start), std::nullopt, false, false, 0};
  p.kind = Pending::Kind::begin;
  p.keep_last = keep_last;
  p.scan_id = start.scan_id;
  p.bytes = total_bytes(p.parts);
  submit(std::move(p));
}

void Journal::open_new_journal(const std::string& scan_id, std::vector<zmq::message_t>&& start, bool keep_last) {
  const auto fresh = settings_.directory / "scan.journal.new";
  const int fd = ::open(fresh.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  {
    std::lock_guard lock(mutex_);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    scan_id_ = scan_id;
    frames_ = 0, last_seq_ = -1, bytes_ = 0, synced_bytes_ = 0, write_seconds_ = 0;
    error_.clear();
    error_new_ = false;
  }
  if (fd < 0) return fail(errno_text("cannot create '" + fresh.string() + "'"));
  try {
    write_all(fd, {{const_cast<char*>(kFileMagic), sizeof kFileMagic}});
  } catch (const std::exception& e) {
    ::close(fd);
    return fail(e.what());
  }
  {
    std::lock_guard lock(mutex_);
    fd_ = fd;
    bytes_ = sizeof kFileMagic;
  }
  write_record(std::move(start), std::nullopt);
  // Durable before it replaces the last scan's journal: the rename is the switch.
  if (fd_ >= 0 && settings_.fsync_ms >= 0) (void)::fdatasync(fd_);
  // The last scan's journal stays until its result file is written (release_finishing). A crash
  // between the two renames leaves it and no current journal: the new scan's start is lost,
  // none of its frames (none was acknowledged).
  if (keep_last && std::filesystem::exists(path_) && ::rename(path_.c_str(), finishing_path().c_str()) != 0)
    return fail(errno_text("cannot keep the last scan's journal"));
  if (::rename(fresh.c_str(), path_.c_str()) != 0) return fail(errno_text("cannot rename the new journal"));
  if (settings_.fsync_ms >= 0) sync_directory(settings_.directory);
}

void Journal::append(const protocol::StartMsg& extension) {
  if (!settings_.enabled) return;
  Pending p{encode_copy(extension), std::nullopt, true, false, 0};
  p.bytes = total_bytes(p.parts);
  submit(std::move(p));
  drain();
}

void Journal::append(protocol::FrameMsg&& frame) {
  if (!settings_.enabled) return;
  const auto seq = frame.seq;
  Pending p{protocol::encode(std::move(frame).to_wire()), seq, false, false, 0};
  p.bytes = total_bytes(p.parts);
  submit(std::move(p));
}

void Journal::append_fit_state(const nlohmann::json& state, bool wait_written) {
  if (!settings_.enabled) return;
  const auto packed = nlohmann::json::to_msgpack(state);  // doubles exact, spectra compact
  Pending p;
  p.parts.emplace_back(kFitStateTopic.data(), kFitStateTopic.size());
  p.parts.emplace_back(packed.data(), packed.size());
  p.bytes = total_bytes(p.parts);
  submit(std::move(p));
  if (wait_written) drain();  // written before the configure or load_references that changed it is answered
}

void Journal::append(const protocol::StopMsg& stop) {
  if (!settings_.enabled) return;
  auto copy = stop;
  Pending p{protocol::encode(std::move(copy).to_wire()), std::nullopt, false, true, 0};
  p.bytes = total_bytes(p.parts);
  submit(std::move(p));  // written and synced by the writer thread: nobody waits for a stop's answer
}

void Journal::write_record(std::vector<zmq::message_t>&& parts, std::optional<std::int64_t> frame_seq) {
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock lock(mutex_);
  if (fd_ < 0) return;  // failed earlier in this scan (reported once)
  RecordHeader h;
  h.parts = static_cast<std::uint32_t>(parts.size());
  std::vector<std::uint64_t> sizes;
  for (const auto& p : parts) sizes.push_back(p.size());
  h.payload = 8 * sizes.size();
  std::uint32_t c = crc(0, sizes.data(), 8 * sizes.size());
  std::vector<iovec> iov = {{&h, sizeof h}, {sizes.data(), 8 * sizes.size()}};
  for (auto& p : parts) {
    h.payload += p.size();
    c = crc(c, p.data(), p.size());
    iov.push_back({p.data(), p.size()});
  }
  h.payload_crc = c;
  h.header_crc = crc(0, &h, offsetof(RecordHeader, header_crc));
  const int fd = fd_;
  lock.unlock();  // the sync thread may take the lock meanwhile; only this thread writes
  try {
    write_all(fd, std::move(iov));
  } catch (const std::exception& e) {
    // A short record at the tail is cut off at recovery; later records must not follow it.
    return fail(e.what());
  }
  if (settings_.fsync_ms == 0 && ::fdatasync(fd) != 0) return fail(errno_text("journal fdatasync"));
  lock.lock();
  bytes_ += sizeof h + h.payload;
  if (settings_.fsync_ms == 0) synced_bytes_ = bytes_;
  if (frame_seq) ++frames_, last_seq_ = *frame_seq;
  write_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void Journal::fail(const std::string& why) {
  std::lock_guard lock(mutex_);
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  error_ = why;
  error_new_ = true;
}

std::string Journal::take_new_error() {
  std::lock_guard lock(mutex_);
  if (!error_new_) return {};
  error_new_ = false;
  return error_;
}

nlohmann::json Journal::stats() const {
  if (!settings_.enabled) return {{"enabled", false}, {"error", error_}};
  std::size_t queued_records = 0, queued_bytes = 0;
  {
    std::lock_guard lock(queue_mutex_);
    queued_records = queue_.size() + (writing_ ? 1 : 0), queued_bytes = queued_bytes_;
  }
  std::lock_guard lock(mutex_);
  return {{"enabled", true},       {"path", path_.string()}, {"fsync_ms", settings_.fsync_ms},
          {"scan_id", scan_id_},   {"frames", frames_},      {"last_seq", last_seq_},
          {"bytes", bytes_},       {"synced_bytes", synced_bytes_}, {"writing", fd_ >= 0},
          {"write_seconds", write_seconds_}, {"queued_records", queued_records}, {"queued_bytes", queued_bytes},
          {"error", error_}};
}

}  // namespace xanesd
