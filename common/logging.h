// Structured logs: one JSON object per line on stderr, e.g.
//   {"ts":"2026-11-22T18:00:00.123Z","level":"info","event":"server_started","port":50051}
// Usage: KVC_LOG(kInfo, "server_started").With("port", port);
// The line is written when the temporary is destroyed. Thread-safe: lines
// from concurrent threads never interleave.
#ifndef KVC_COMMON_LOGGING_H_
#define KVC_COMMON_LOGGING_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

namespace kvc {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// Lines below `level` are dropped. Default kInfo.
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// Parses "debug", "info", "warning", "error"; returns false on anything else.
bool ParseLogLevel(absl::string_view text, LogLevel* level);

class LogEvent {
 public:
  LogEvent(LogLevel level, absl::string_view event);
  ~LogEvent();
  LogEvent(const LogEvent&) = delete;
  LogEvent& operator=(const LogEvent&) = delete;

  LogEvent& With(absl::string_view key, absl::string_view value);
  LogEvent& With(absl::string_view key, const char* value) {
    return With(key, absl::string_view(value));
  }
  LogEvent& With(absl::string_view key, const std::string& value) {
    return With(key, absl::string_view(value));
  }
  LogEvent& With(absl::string_view key, int64_t value);
  LogEvent& With(absl::string_view key, uint64_t value);
  LogEvent& With(absl::string_view key, int value) { return With(key, int64_t{value}); }
  LogEvent& With(absl::string_view key, unsigned value) { return With(key, uint64_t{value}); }
  LogEvent& With(absl::string_view key, long long value) {
    return With(key, static_cast<int64_t>(value));
  }
  LogEvent& With(absl::string_view key, unsigned long long value) {
    return With(key, static_cast<uint64_t>(value));
  }
  LogEvent& With(absl::string_view key, double value);
  LogEvent& With(absl::string_view key, bool value);

 private:
  bool enabled_;
  std::string line_;
};

// Appends `text` to `out` as a JSON string literal, quotes included.
void AppendJsonString(absl::string_view text, std::string* out);

}  // namespace kvc

#define KVC_LOG(level, event) ::kvc::LogEvent(::kvc::LogLevel::level, event)

#endif  // KVC_COMMON_LOGGING_H_
