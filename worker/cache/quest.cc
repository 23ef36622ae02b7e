#include "worker/cache/quest.h"

#include <algorithm>
#include <new>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/cache/attend.h"

namespace kvc::cache {

namespace k = ::kvc::kernels;

absl::Status QuestOptions::Validate() const {
  if (page_size < 1) return absl::InvalidArgumentError(absl::StrCat("quest: page ", page_size, " must be >= 1"));
  if (budget < page_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("quest: budget ", budget, " must be at least one page (", page_size, " tokens)"));
  }
  KVC_RETURN_IF_ERROR(CheckKvDtype("quest", kv_dtype));
  return absl::OkStatus();
}

Quest::Quest(const model::ModelConfig& config, const QuestOptions& options) : config_(config), options_(options) {
  layers_.reserve(config.n_layers);
  for (int32_t l = 0; l < config.n_layers; ++l) {
    layers_.push_back(Layer{LayerKv(config.n_kv_heads, config.head_dim(), options.kv_dtype), 0, {}, {},
                            std::vector<std::vector<int32_t>>(config.n_kv_heads)});
  }
}

absl::StatusOr<std::unique_ptr<Quest>> Quest::Create(const model::ModelConfig& config, const QuestOptions& options) {
  KVC_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<Quest>(new Quest(config, options));
}

std::string Quest::name() const {
  return absl::StrCat("quest(page=", options_.page_size, ",budget=", options_.budget,
                      options_.compact_positions ? ",compact" : "", ")");
}

size_t Quest::page_meta_bytes() const {
  return 2 * static_cast<size_t>(config_.n_kv_heads) * config_.head_dim() * sizeof(float);
}

size_t Quest::bytes_per_token() const {
  const size_t meta = (page_meta_bytes() + options_.page_size - 1) / options_.page_size;
  return (layers_.front().kv.slot_bytes() + meta) * layers_.size();
}

absl::Status Quest::Attend(const k::ExecContext& ctx, const model::AttendArgs& a) {
  KVC_RETURN_IF_ERROR(CheckAttendArgs(config_, a));
  Layer& layer = layers_[a.layer];
  const int64_t past = layer.length, n = a.num_tokens, total = past + n;
  if (a.first_position != past) {
    return absl::InvalidArgumentError(
        absl::StrCat("quest: chunk at position ", a.first_position, " does not follow the ", past, " tokens held"));
  }
  const int32_t hkv = config_.n_kv_heads, d = config_.head_dim();
  const int64_t ps = options_.page_size;
  KVC_RETURN_IF_ERROR(layer.kv.Reserve(total));
  layer.kv.WriteRange(past, n, a.k, a.v);
  const k::KvPool pool = layer.kv.Pool(total);

  // Page metadata over [0, total): the pages the chunk touched.
  const int64_t pages = (total + ps - 1) / ps;
  const size_t meta_elems = static_cast<size_t>(pages) * hkv * d;
  try {
    if (layer.meta_min.size() < meta_elems) {
      const size_t grown = std::max(meta_elems, layer.meta_min.size() + layer.meta_min.size() / 2);
      layer.meta_min.resize(grown);
      layer.meta_max.resize(grown);
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("quest: metadata of ", pages, " pages cannot be allocated"));
  }
  const k::QuestMeta meta{hkv, d, options_.page_size, pages, layer.meta_min.data(), layer.meta_max.data()};
  KVC_RETURN_IF_ERROR(k::QuestUpdatePages(ctx, k::QuestUpdateArgs{pool, ModelRope(config_), meta, total, past}));
  layer.length = total;

  int64_t count = total;  // keys per list
  for (std::vector<int32_t>& s : layer.selected) s.clear();
  if (n > 1 || pages <= options_.budget_pages()) {
    // Prefill (dense, as in the paper) or a context within the budget.
    slots_.resize(total);
    std::iota(slots_.begin(), slots_.end(), 0);
    KVC_RETURN_IF_ERROR(AttendCausal(ctx, config_, a, pool, slots_.data(), slots_.data(), total));
  } else {
    // Decode: per KV head the best budget_pages() - 1 of the pages before the
    // last, then the last page (the new token's).
    const int64_t last = pages - 1, pick = options_.budget_pages() - 1;
    picked_.clear();
    if (pick > 0) {
      scores_.resize(static_cast<size_t>(hkv) * last);
      picked_.resize(static_cast<size_t>(hkv) * pick);
      k::QuestSelectArgs s;
      s.q = a.q;
      s.num_q_heads = config_.n_heads;
      s.q_position = static_cast<int32_t>(a.first_position);
      s.rope = ModelRope(config_);
      s.meta = meta;
      s.num_pages = last;
      s.k = pick;
      s.scores = scores_.data();
      s.selected = picked_.data();
      KVC_RETURN_IF_ERROR(k::QuestSelect(ctx, s));
    }
    count = pick * ps + (total - last * ps);
    slots_.resize(static_cast<size_t>(hkv) * count);
    positions_.resize(slots_.size());
    indptr_.resize(hkv + 1);
    for (int32_t h = 0; h < hkv; ++h) {
      std::vector<int32_t>& sel = layer.selected[h];
      sel.assign(picked_.begin() + h * pick, picked_.begin() + (h + 1) * pick);
      sel.push_back(static_cast<int32_t>(last));
      int32_t* out = slots_.data() + h * count;
      for (const int32_t page : sel) {
        for (int64_t t = page * ps; t < std::min((page + 1) * ps, total); ++t) *out++ = static_cast<int32_t>(t);
      }
      indptr_[h] = static_cast<int32_t>(h * count);
      for (int64_t j = 0; j < count; ++j) {
        positions_[h * count + j] = options_.compact_positions ? static_cast<int32_t>(j) : slots_[h * count + j];
      }
    }
    indptr_[hkv] = static_cast<int32_t>(hkv * count);
    const int32_t query_position =
        static_cast<int32_t>(options_.compact_positions ? count - 1 : a.first_position);
    const k::KvGather gather{indptr_.data(), slots_.data(), positions_.data(), /*per_kv_head=*/true};
    KVC_RETURN_IF_ERROR(
        AttendGather(ctx, config_, a.q, 1, pool, gather, &query_position, k::ScoreAccum{}, a.out, a.lse));
  }

  if (a.layer == 0) stats_.attended_last_step = 0;
  const int64_t pairs = n * (count - n) + n * (n + 1) / 2;
  stats_.attended_last_step += pairs;
  stats_.attended_total += pairs;
  return absl::OkStatus();
}

PolicyStats Quest::stats() const {
  PolicyStats s = stats_;
  s.tokens_seen = layers_.empty() ? 0 : layers_.back().length;
  s.resident_bytes = 0;
  for (const Layer& l : layers_) {
    s.resident_tokens = std::max(s.resident_tokens, l.length);
    const int64_t pages = (l.length + options_.page_size - 1) / options_.page_size;
    s.resident_bytes += static_cast<size_t>(l.length) * l.kv.slot_bytes() + static_cast<size_t>(pages) * page_meta_bytes();
  }
  return s;
}

}  // namespace kvc::cache
