// Time sources. Production code takes a Clock* so tests can control time
// (lease expiry, latency) with FakeClock instead of sleeping.
#ifndef KVC_COMMON_CLOCK_H_
#define KVC_COMMON_CLOCK_H_

#include <atomic>
#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace kvc {

// Thread-safe: implementations may be called from any thread.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // The process-wide real clock; never null, never destroyed.
  static Clock* Real();
};

// A clock that moves only when told to. Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000))
      : micros_(absl::ToUnixMicros(start)) {}
  absl::Time Now() const override { return absl::FromUnixMicros(micros_.load()); }
  void Advance(absl::Duration d) { micros_.fetch_add(absl::ToInt64Microseconds(d)); }

 private:
  std::atomic<int64_t> micros_;
};

}  // namespace kvc

#endif  // KVC_COMMON_CLOCK_H_
