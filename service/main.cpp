// xanesd: args → config → daemon → wait for a signal or a shutdown request.
#include <csignal>
#include <cstdio>
#include <iostream>

#include <spdlog/spdlog.h>

#include "batch.hpp"
#include "config/config.hpp"
#include "daemon.hpp"
#include "security/curve.hpp"

namespace {

int usage(int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: xanesd --config FILE [--set key=value ...]\n"
               "       xanesd fit --input SCAN.h5 [--refs FILE ...] --out RESULT.h5 [--config FILE] [--set key=value ...]\n"
               "       xanesd keygen --out NAME  (a CURVE key pair: NAME.key, secret, and NAME.pub, for the config's security.* keys)\n"
               "       xanesd --config-keys     (print every config key as a Markdown table)\n"
               "       xanesd --version\n"
               "Config keys are documented in config/README.md.\n");
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "fit") return xanesd::batch_main(argc, argv);
  if (argc > 1 && std::string(argv[1]) == "keygen") {
    if (argc != 4 || std::string(argv[2]) != "--out") return usage(2);
    try {
      xanesd::protocol::write_key_files(argv[3], xanesd::protocol::make_curve_keys());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "xanesd keygen: %s\n", e.what());
      return 1;
    }
    std::printf("xanesd keygen: wrote %s.key (secret: keep it on this machine, mode 0600) and %s.pub (give it to the other side)\n",
                argv[3], argv[3]);
    return 0;
  }
  std::string config_file;
  std::vector<std::string> overrides;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) config_file = argv[++i];
    else if (a == "--set" && i + 1 < argc) overrides.emplace_back(argv[++i]);
    else if (a == "--config-keys") return std::cout << xanesd::config_keys_markdown(), 0;
    else if (a == "-h" || a == "--help") return usage(0);
    else if (a == "--version") return std::printf("xanesd %s\n", XANESD_VERSION), 0;
    else {
      std::fprintf(stderr, "xanesd: unknown argument '%s'\n", a.c_str());
      return usage(2);
    }
  }
  if (config_file.empty()) return usage(2);

  // Block the stop signals in every thread; main waits for them below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  try {
    const auto cfg = xanesd::load_config(config_file, overrides);
    spdlog::set_level(spdlog::level::from_str(cfg.log_level));
    xanesd::Daemon daemon(cfg);
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
    return 2;
  } catch (const zmq::error_t& e) {
    std::fprintf(stderr, "xanesd: cannot open sockets: %s\n", e.what());
    return 3;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "xanesd: fatal: %s\n", e.what());
    return 1;
  }
}
