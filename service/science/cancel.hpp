// Cooperative cancellation of long science work (energy selection). Whoever runs the work for
// a request installs a CancelScope with a predicate (e.g. "its requester gave up"); the work's
// loops call throw_if_cancelled() between steps, which throws Cancelled once the predicate is
// true. Thread-local, so the pure functions keep their signatures (tests and benchmarks call
// them without a scope: never cancelled); polled on the thread that installed the scope.
#pragma once

#include <functional>
#include <stdexcept>

namespace xanesd::science {

struct Cancelled : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {
inline thread_local const std::function<bool()>* cancel_predicate = nullptr;
}

class CancelScope {
 public:
  explicit CancelScope(std::function<bool()> cancelled) : fn_(std::move(cancelled)), prev_(detail::cancel_predicate) {
    detail::cancel_predicate = &fn_;
  }
  ~CancelScope() { detail::cancel_predicate = prev_; }
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  std::function<bool()> fn_;
  const std::function<bool()>* prev_;
};

inline void throw_if_cancelled() {
  if (detail::cancel_predicate && (*detail::cancel_predicate)()) throw Cancelled("cancelled");
}

}  // namespace xanesd::science
