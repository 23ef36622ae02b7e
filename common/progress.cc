#include "common/progress.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_format.h"
#include "common/units.h"

namespace kvc {

ProgressBar::ProgressBar(std::string label, uint64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), tty_(isatty(2) == 1),
      start_(absl::Now()) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Add(uint64_t done, uint64_t bytes) {
  done_ += done;
  bytes_ += bytes;
  Draw(false);
}

void ProgressBar::Finish() {
  if (finished_) return;
  finished_ = true;
  Draw(true);
}

void ProgressBar::Draw(bool final) {
  const double frac = total_ == 0 ? 1.0 : static_cast<double>(done_) / static_cast<double>(total_);
  const int decile = static_cast<int>(frac * 10);
  const absl::Time now = absl::Now();
  if (!final) {
    if (tty_ && now - last_draw_ < absl::Milliseconds(100)) return;
    if (!tty_ && decile == last_decile_) return;
  }
  last_draw_ = now;
  last_decile_ = decile;
  const double secs = std::max(1e-9, absl::ToDoubleSeconds(now - start_));
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(filled, '=');
  if (filled < kWidth) bar += '>' + std::string(kWidth - filled - 1, ' ');
  std::string rate = bytes_ > 0 ? absl::StrFormat("  %s/s", FormatBytes(static_cast<uint64_t>(bytes_ / secs)))
                                : std::string();
  std::fprintf(stderr, "%s%-10s [%s] %3d%%  %llu/%llu %s%s  %.1fs%s", tty_ ? "\r" : "", label_.c_str(),
               bar.c_str(), static_cast<int>(frac * 100), static_cast<unsigned long long>(done_),
               static_cast<unsigned long long>(total_), unit_.c_str(), rate.c_str(), secs,
               (tty_ && !final) ? "" : "\n");
  std::fflush(stderr);
}

}  // namespace kvc
