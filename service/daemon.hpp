// The wiring, in data-path order: receiver → ingest queue → pipeline → publisher, plus the
// control server. Construction loads references and binds every socket, so a bad config or a
// busy port fails here, before anything runs.
#pragma once

#include <atomic>

#include <zmq.hpp>

#include "config/config.hpp"
#include "control/control_server.hpp"
#include "parallel/comm.hpp"
#include "ingest/receiver.hpp"
#include "pipeline/pipeline.hpp"
#include "publish/publisher.hpp"

namespace xanesd {

// Loads every file of references.files; throws ConfigError naming the file on failure.
std::vector<science::Reference> load_references(const ReferencesConfig& cfg);

struct Endpoints {
  std::string ingest, publish, control;  // as bound (a "*" port resolved)
};

// Process-wide settings that must precede every other member: the logging level, and the
// allocator policy for large blocks.
struct ProcessSetup {
  explicit ProcessSetup(const Config& cfg);
};

class Daemon {
 public:
  // `comm`: the MPI job this daemon is rank 0 of (README "Live sharding"); null or one rank: one process.
  explicit Daemon(const Config& cfg, const parallel::Comm* comm = nullptr);
  ~Daemon();
  void start();
  bool shutdown_requested() const { return shutdown_; }
  // Before a stop by signal: a running scan is saved as a partial result (its journal still
  // holds it, so a restarted daemon resumes it and rewrites the file when it ends). Returns a
  // line for the log, empty when no scan runs.
  std::string save_interrupted_scan(const std::string& why);
  const Endpoints& endpoints() const { return endpoints_; }

 private:
  ProcessSetup setup_;  // first member: runs before anything logs or allocates frames
  zmq::context_t ctx_{1};
  Authenticator auth_;  // before every socket: checks the endpoints, answers CURVE handshakes
  Counters counters_;
  IngestQueue queue_;
  Publisher publisher_;
  Pipeline pipeline_;
  Receiver receiver_;
  std::atomic<bool> shutdown_{false};
  ControlServer control_;
  Endpoints endpoints_;
};

}  // namespace xanesd
