// Runs the real binaries (xanesd, xanes-replay) as child processes for end-to-end tests.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace xanesd::test {

class Process {
 public:
  explicit Process(std::vector<std::string> argv, const std::string& log_file = "") {
    std::fflush(nullptr);  // else the child's freopen writes the parent's buffered output a second time
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      if (!log_file.empty()) {
        FILE* f = std::freopen(log_file.c_str(), "w", stdout);
        (void)f;
        dup2(fileno(stdout), fileno(stderr));
      }
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  Process(const Process&) = delete;
  ~Process() {
    if (pid_ > 0 && !exit_code_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Exit code, or nullopt if still running after `timeout`.
  std::optional<int> wait(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (!exit_code_) {
      int status = 0;
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      else if (std::chrono::steady_clock::now() > until) return std::nullopt;
      else std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return exit_code_;
  }
  void signal(int sig) { kill(pid_, sig); }

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

}  // namespace xanesd::test
