#include "kernels/cpu/isa/rope.h"

#include <cmath>
#include <cstring>

namespace kvc::kernels::KVC_CPU_NS {
namespace {

// Frequencies exactly as the reference computes them (theta widened to double).
double Frequency(float theta, int head_dim, int i) {
  return std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
}

// rows[r] = (cos, sin) of (first + r) * step * freq_i for r < num_rows,
// stored [num_rows][2][half]. The start is direct sin/cos; later rows follow
// by complex multiplication in double (error grows ~1e-16 per row, so even
// kMaxHighRows rows stay far below fp32 rounding).
void FillRows(float theta, int head_dim, int64_t first, int64_t step, int64_t num_rows,
              float* rows) {
  const int half = head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double freq = Frequency(theta, head_dim, i);
    const double start = static_cast<double>(first * step) * freq;
    const double delta = static_cast<double>(step) * freq;
    const double dc = std::cos(delta), ds = std::sin(delta);
    double c = std::cos(start), s = std::sin(start);
    for (int64_t r = 0; r < num_rows; ++r) {
      rows[(2 * r) * half + i] = static_cast<float>(c);
      rows[(2 * r + 1) * half + i] = static_cast<float>(s);
      const double nc = c * dc - s * ds;
      s = s * dc + c * ds;
      c = nc;
    }
  }
}

// The low rows (positions 0..255) depend only on theta and head_dim: each
// thread keeps the last few it built for the life of the process (a decode
// step makes a table per layer and pass; a model uses one or two pairs).
// Plain arrays, not std::map: this file is compiled once per ISA and
// partially linked (isa.h), where out-of-line template instances cannot be
// shared between the copies. Null when the memory cannot be had.
const float* LowRows(float theta, int head_dim) {
  struct Entry {
    float theta;
    int head_dim;
    float* rows;
  };
  constexpr int kEntries = 4;
  thread_local Entry entries[kEntries] = {};
  thread_local int next = 0;
  for (const Entry& e : entries) {
    if (e.rows != nullptr && e.head_dim == head_dim && std::memcmp(&e.theta, &theta, sizeof(float)) == 0) {
      return e.rows;
    }
  }
  AlignedFloats fresh = AllocateFloats(static_cast<size_t>(256) * head_dim);
  if (!fresh) return nullptr;
  FillRows(theta, head_dim, 0, 1, 256, fresh.get());
  Entry& slot = entries[next];
  next = (next + 1) % kEntries;
  if (slot.rows != nullptr) AlignedFloats{slot.rows};  // frees the evicted one
  slot = {theta, head_dim, fresh.release()};
  return slot.rows;
}

}  // namespace

bool RopeTable::Build(float theta, int head_dim, int32_t min_position, int32_t max_position) {
  theta_ = theta;
  head_dim_ = head_dim;
  half_ = head_dim / 2;
  high_base_ = min_position >> 8;
  const int64_t high_rows = static_cast<int64_t>(max_position >> 8) - high_base_ + 1;
  direct_ = high_rows > kMaxHighRows;
  if (direct_) return true;
  low_ = LowRows(theta, head_dim);
  high_ = AllocateFloats(static_cast<size_t>(high_rows) * 2 * half_);
  if (!low_ || !high_) return false;
  FillRows(theta, head_dim, high_base_, 256, high_rows, high_.get());
  return true;
}

void RopeTable::Angles(int32_t p, float* cos, float* sin) const {
  const int half = half_;
  if (direct_) {
    for (int i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * Frequency(theta_, head_dim_, i);
      cos[i] = static_cast<float>(std::cos(angle));
      sin[i] = static_cast<float>(std::sin(angle));
    }
    return;
  }
  // p == (p >> 8) * 256 + (p & 255) for every int32 p (arithmetic shift).
  const float* lc = low_ + static_cast<int64_t>(p & 255) * 2 * half;
  const float* ls = lc + half;
  const float* hc = high_.get() + static_cast<int64_t>((p >> 8) - high_base_) * 2 * half;
  const float* hs = hc + half;
  for (int i = 0; i < half; ++i) {
    cos[i] = lc[i] * hc[i] - ls[i] * hs[i];
    sin[i] = ls[i] * hc[i] + lc[i] * hs[i];
  }
}

void RotateRow(RopeStyle style, int head_dim, const float* cos, const float* sin, float* x) {
  const int half = head_dim / 2;
  if (style == RopeStyle::kHalf) {
    float* __restrict a = x;
    float* __restrict b = x + half;
    for (int i = 0; i < half; ++i) {
      const float xa = a[i], xb = b[i];
      a[i] = xa * cos[i] - xb * sin[i];
      b[i] = xa * sin[i] + xb * cos[i];
    }
  } else if (style == RopeStyle::kInterleaved) {
    for (int i = 0; i < half; ++i) {
      const float xa = x[2 * i], xb = x[2 * i + 1];
      x[2 * i] = xa * cos[i] - xb * sin[i];
      x[2 * i + 1] = xa * sin[i] + xb * cos[i];
    }
  }
}

void PositionRange(const int32_t* positions, int64_t n, int32_t* min_position,
                   int32_t* max_position) {
  int32_t lo = positions[0], hi = positions[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = positions[i] < lo ? positions[i] : lo;
    hi = positions[i] > hi ? positions[i] : hi;
  }
  *min_position = lo;
  *max_position = hi;
}

}  // namespace kvc::kernels::KVC_CPU_NS
