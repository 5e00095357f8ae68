// xanesd: args → config → daemon → wait for a signal or a shutdown request.
#include <csignal>
#include <cstdio>
#include <iostream>

#include <spdlog/spdlog.h>

#include "batch.hpp"
#include "cli.hpp"
#include "common/allocator.hpp"
#include "config/config.hpp"
#include "daemon.hpp"
#include "parallel/comm.hpp"
#include "parallel/shards.hpp"
#include "security/curve.hpp"

int main(int argc, char** argv) {
  xanesd::restart_with_huge_page_heap(argv);
  xanesd::tune_allocator();  // daemon and batch alike
  CLI::App app("xanesd: live XANES speciation daemon. Config keys are documented in config/README.md.", "xanesd");
  app.set_version_flag("--version", std::string("xanesd ") + XANESD_VERSION + (xanesd::parallel::mpi_build() ? " (MPI)" : ""));
  std::string config_file;
  std::vector<std::string> overrides;
  bool config_keys = false;
  app.add_option("--config", config_file, "the daemon's config file (JSON)");
  app.add_option("--set", overrides, "override a config key: key=value (repeatable)")->allow_extra_args(false);
  app.add_flag("--config-keys", config_keys, "print every config key as a Markdown table");

  auto* fit = app.add_subcommand("fit", std::string("fit a scan file (or a result file) with the daemon's code and write the same result file") +
                                            (xanesd::parallel::mpi_build() ? "; under mpirun -np N each rank fits a block of rows (README \"MPI\")" : ""));
  xanesd::BatchOptions fit_opt;
  std::string fit_config;
  std::vector<std::string> fit_overrides;
  fit->add_option("--input", fit_opt.input, "scan file (README \"Scan files\") or an xanesd result file")->required();
  fit->add_option("--out", fit_opt.output, "result file to write")->required();
  fit->add_option("--refs", fit_opt.reference_files, "reference file (repeatable); default: the config's references.files")
      ->allow_extra_args(false);
  fit->add_option("--names", fit_opt.reference_names, "keep only these references, in this order: A,B,...")->delimiter(',');
  fit->add_option("--config", fit_config, "config file (default: the built-in defaults)");
  fit->add_option("--set", fit_overrides, "override a config key: key=value (repeatable)")->allow_extra_args(false);
  fit->add_flag("--quiet", fit_opt.quiet, "no progress lines on stderr");

  auto* keygen = app.add_subcommand("keygen", "make a CURVE key pair: NAME.key (secret) and NAME.pub, for the config's security.* keys");
  std::string key_name;
  keygen->add_option("--out", key_name, "NAME")->required();

  if (auto code = xanesd::cli::parse(app, argc, argv)) return *code;
  if (*fit) return xanesd::batch_command(fit_config, fit_overrides, fit_opt);
  if (*keygen) {
    try {
      xanesd::protocol::write_key_files(key_name, xanesd::protocol::make_curve_keys());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "xanesd keygen: %s\n", e.what());
      return 1;
    }
    std::printf("xanesd keygen: wrote %s.key (secret: keep it on this machine, mode 0600) and %s.pub (give it to the other side)\n",
                key_name.c_str(), key_name.c_str());
    return 0;
  }
  if (config_keys) return std::cout << xanesd::config_keys_markdown(), 0;
  if (config_file.empty()) {
    std::fprintf(stderr, "xanesd: --config is required (see --help)\n");
    return 2;
  }

  // Block the stop signals in every thread; main waits for them below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // The MPI build's daemon is one rank of a job (mpirun -np N xanesd …; one process without
  // mpirun): rank 0 is the daemon, the others fit its scans' row blocks (README "Live sharding").
  std::unique_ptr<xanesd::parallel::Comm> comm;
  try {
    if (xanesd::parallel::mpi_build()) comm = xanesd::parallel::start();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xanesd: %s\n", e.what());
    return 1;
  }
  // A rank that fails ends the job: the others would wait for it.
  auto end_job = [&](int code) {
    if (comm) comm->abort(code);
    return code;
  };
  try {
    const auto cfg = xanesd::load_config(config_file, overrides);
    spdlog::set_level(spdlog::level::from_str(cfg.log_level));
    if (comm && comm->rank() > 0) {
      xanesd::parallel::run_shard_worker(*comm);
      return 0;
    }
    xanesd::Daemon daemon(cfg, comm.get());
    daemon.start();
    const timespec tick{0, 100'000'000};
    while (!daemon.shutdown_requested()) {
      const int sig = sigtimedwait(&signals, nullptr, &tick);
      if (sig == SIGINT || sig == SIGTERM) {
        spdlog::info("signal {}: shutting down", sig);
        if (const auto saved = daemon.save_interrupted_scan(sig == SIGINT ? "SIGINT" : "SIGTERM"); !saved.empty())
          spdlog::warn("{}", saved);
        break;
      }
    }
    spdlog::info("xanesd stopped");
    return 0;
  } catch (const xanesd::ConfigError& e) {
    std::fprintf(stderr, "xanesd: configuration error: %s\n", e.what());
    return end_job(2);
  } catch (const zmq::error_t& e) {
    std::fprintf(stderr, "xanesd: cannot open sockets: %s\n", e.what());
    return end_job(3);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xanesd: fatal: %s\n", e.what());
    return end_job(1);
  }
}
