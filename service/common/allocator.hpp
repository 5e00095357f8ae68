// The process's policy for large heap blocks (glibc malloc): frames and maps are megabytes
// each and come and go at the frame rate.
#pragma once

#include <malloc.h>

namespace xanesd {

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
