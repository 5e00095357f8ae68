#include "daemon.hpp"

#include "common/allocator.hpp"

#include <chrono>
#include <future>

#include <spdlog/spdlog.h>

namespace xanesd {

std::vector<science::Reference> load_references(const ReferencesConfig& cfg) {
  std::vector<science::Reference> refs;
  for (const auto& f : cfg.files) {
    try {
      auto loaded = science::load_reference_file(f, science::normalize_mode_from_string(cfg.normalize),
                                                 science::energy_unit_from_string(cfg.energy_unit));
      refs.insert(refs.end(), loaded.begin(), loaded.end());
    } catch (const std::exception& e) {
      throw ConfigError(std::string("references.files: ") + e.what());
    }
  }
  return refs;
}

ProcessSetup::ProcessSetup(const Config& cfg) {
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  tune_allocator();
}

Daemon::Daemon(const Config& cfg, const parallel::Comm* comm)
    : setup_(cfg),
      auth_(ctx_, cfg),
      queue_(static_cast<std::size_t>(cfg.ingest.queue_frames), static_cast<std::size_t>(cfg.ingest.queue_MiB * 1048576.0)),
      publisher_(ctx_, cfg.publish, counters_, &auth_),
      pipeline_(cfg, load_references(cfg.references), queue_, publisher_, counters_,
                comm && comm->size() > 1 ? std::make_unique<parallel::FitShards>(*comm, cfg) : nullptr),
      receiver_(ctx_, cfg.ingest, queue_, counters_,
                [this](const Issue& i, const std::string& scan) { pipeline_.report(i, scan); }, &auth_),
      control_(ctx_, cfg.control, pipeline_, publisher_, counters_, shutdown_, &auth_) {
  endpoints_ = {receiver_.endpoint(), publisher_.endpoint(), control_.endpoint()};
}

Daemon::~Daemon() = default;

void Daemon::start() {
  publisher_.start();
  pipeline_.start();
  receiver_.start();
  control_.start();
  spdlog::info("xanesd listening: ingest {} · results {} · control {}", endpoints_.ingest, endpoints_.publish,
               endpoints_.control);
}

std::string Daemon::save_interrupted_scan(const std::string& why) {
  const auto st = pipeline_.status();
  if (st.value("state", "") != "running") return "";
  const std::string id = st.at("scan").value("scan_id", "");
  auto ticket = pipeline_.submit({.cmd = "save", .request_id = nullptr, .args = protocol::SaveArgs{}});
  if (ticket.reply.wait_for(std::chrono::seconds(120)) != std::future_status::ready)
    return "scan " + id + " was running; saving it took more than 120 s, stopped without a result file (the journal keeps the scan)";
  const auto reply = ticket.reply.get();
  std::string line = "scan " + id + " was running (" + why + "): ";
  if (!reply.value("ok", false)) {
    line += "its partial result could not be saved (" + reply.value("error", std::string("unknown error")) + ")";
  } else {
    line += "saved as a partial result to " + reply.value("path", std::string("?")) + " (" +
            std::to_string(st.at("scan").value("frames_applied", 0)) +
            " frames; /entry/status records state 'running'); a restarted xanesd resumes it from the journal";
  }
  pipeline_.report({"scan_interrupted", line}, id);
  return line;
}

}  // namespace xanesd
