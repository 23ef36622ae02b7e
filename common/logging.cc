#include "common/logging.h"

#include <atomic>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace kvc {
namespace {
std::atomic<int> g_min_level{static_cast<int>(LogLevel::kInfo)};

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
  }
  return "info";
}
}  // namespace

void SetMinLogLevel(LogLevel level) { g_min_level.store(static_cast<int>(level)); }
LogLevel MinLogLevel() { return static_cast<LogLevel>(g_min_level.load()); }

bool ParseLogLevel(absl::string_view text, LogLevel* level) {
  for (LogLevel l : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError}) {
    if (text == LevelName(l)) {
      *level = l;
      return true;
    }
  }
  return false;
}

void AppendJsonString(absl::string_view text, std::string* out) {
  out->push_back('"');
  for (unsigned char c : text) {
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(out, "\\u%04x", c);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

LogEvent::LogEvent(LogLevel level, absl::string_view event)
    : enabled_(static_cast<int>(level) >= g_min_level.load()) {
  if (!enabled_) return;
  line_.reserve(160);
  line_.append("{\"ts\":\"");
  line_.append(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()));
  line_.append("\",\"level\":\"");
  line_.append(LevelName(level));
  line_.append("\",\"event\":");
  AppendJsonString(event, &line_);
}

LogEvent::~LogEvent() {
  if (!enabled_) return;
  line_.append("}\n");
  static std::mutex* mu = new std::mutex;
  std::lock_guard<std::mutex> lock(*mu);
  std::fwrite(line_.data(), 1, line_.size(), stderr);
  std::fflush(stderr);
}

LogEvent& LogEvent::With(absl::string_view key, absl::string_view value) {
  if (!enabled_) return *this;
  line_.push_back(',');
  AppendJsonString(key, &line_);
  line_.push_back(':');
  AppendJsonString(value, &line_);
  return *this;
}

LogEvent& LogEvent::With(absl::string_view key, int64_t value) {
  if (!enabled_) return *this;
  line_.push_back(',');
  AppendJsonString(key, &line_);
  absl::StrAppend(&line_, ":", value);
  return *this;
}

LogEvent& LogEvent::With(absl::string_view key, uint64_t value) {
  if (!enabled_) return *this;
  line_.push_back(',');
  AppendJsonString(key, &line_);
  absl::StrAppend(&line_, ":", value);
  return *this;
}

LogEvent& LogEvent::With(absl::string_view key, double value) {
  if (!enabled_) return *this;
  line_.push_back(',');
  AppendJsonString(key, &line_);
  absl::StrAppendFormat(&line_, ":%.6g", value);
  return *this;
}

LogEvent& LogEvent::With(absl::string_view key, bool value) {
  if (!enabled_) return *this;
  line_.push_back(',');
  AppendJsonString(key, &line_);
  line_.append(value ? ":true" : ":false");
  return *this;
}

}  // namespace kvc
