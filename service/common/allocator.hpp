// The process's policy for large heap blocks (glibc malloc): frames and maps are megabytes
// each and come and go at the frame rate.
#pragma once

#include <gnu/libc-version.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>

namespace xanesd {

// Restarts the process (execv: the same pid, arguments and environment) with glibc's malloc
// asking for transparent huge pages for its heap: the tunable glibc.malloc.hugetlb=1, which
// glibc (2.35 on) reads only at start. First thing in main(), before any thread or MPI. Every
// image-sized temporary (segmentation sample, edge-map blocks, the batch read's buffers, the
// finish's scratch after release_free_heap) is first-touch memory, and on virtual machines a
// fresh 4 KiB page costs ~10 µs: 2.5 ms a MB, against ~0.1 ms a MB in 2 MiB pages. Returns
// (nothing done) when the tunable is set already (by this restart, or by the user: =0 turns
// it off), glibc is older, THP is "never", or the restart fails.
inline void restart_with_huge_page_heap(char** argv) {
  const char* set = std::getenv("GLIBC_TUNABLES");
  std::string tunables = set ? set : "";
  if (tunables.find("glibc.malloc.hugetlb") != std::string::npos) return;
  int major = 0, minor = 0;
  if (std::sscanf(gnu_get_libc_version(), "%d.%d", &major, &minor) != 2 || major < 2 || (major == 2 && minor < 35)) return;
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  const std::string mode((std::istreambuf_iterator<char>(thp)), std::istreambuf_iterator<char>());
  if (mode.empty() || mode.find("[never]") != std::string::npos) return;
  if (!tunables.empty()) tunables += ':';
  tunables += "glibc.malloc.hugetlb=1";
  if (setenv("GLIBC_TUNABLES", tunables.c_str(), 1) != 0) return;
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);
}

// Set first thing in main() and by the Daemon (the batch fit and the benchmarks that hold a
// Daemon allocate frame-sized blocks before one exists).
inline void tune_allocator() {
  // By default glibc serves such blocks with fresh mmap()s, so every frame pays page faults and
  // zeroing (page clearing was a third of the bench_ingest profile at 2048²). Keep them in the
  // heap for reuse.
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);  // glibc's maximum; a 2048² float32 frame is 16 MB
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
  // Per-thread arenas stay: limiting them to one (so the pages of a frame the pipeline thread
  // frees serve the next frame ZeroMQ's I/O thread receives) made a 2048² scan no faster once
  // the image-sized buffers moved to huge pages, and cost small messages a third of their rate
  // (bench_ingest, 10-pixel batches, lock contention between the two threads).
}

// Gives the free pages the heap kept for reuse back to the system. The heap keeps what the most
// frames in flight at once needed (the ZeroMQ and ingest queues, the journal's queue: 0.6–0.8 GB
// at 2048²), which a scan's final maps and result file would otherwise stack on top of.
inline void release_free_heap() { malloc_trim(0); }

}  // namespace xanesd
