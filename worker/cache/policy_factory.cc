#include "worker/cache/policy_factory.h"

#include <algorithm>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "worker/cache/cascading.h"
#include "worker/cache/combined.h"
#include "worker/cache/full_attention.h"
#include "worker/cache/h2o.h"
#include "worker/cache/less.h"
#include "worker/cache/quest.h"
#include "worker/cache/refresh_kv.h"
#include "worker/cache/snapkv.h"
#include "worker/cache/token_select.h"

namespace kvc::cache {
namespace {

// key=value pairs of a spec; each get marks its key used, and Finish()
// reports the first key nobody asked for.
class Params {
 public:
  static absl::StatusOr<Params> Parse(const std::string& spec, const std::string& args) {
    Params p;
    p.spec_ = spec;
    if (args.empty()) return p;
    for (absl::string_view kv : absl::StrSplit(args, ',')) {
      const std::vector<std::string> parts = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      if (parts.size() != 2 || parts[0].empty()) {
        return absl::InvalidArgumentError(absl::StrCat("policy \"", spec, "\": \"", std::string(kv),
                                                       "\" is not key=value"));
      }
      if (!p.values_.emplace(parts[0], parts[1]).second) {
        return absl::InvalidArgumentError(absl::StrCat("policy \"", spec, "\": ", parts[0], " given twice"));
      }
    }
    return p;
  }

  absl::Status Int(const std::string& key, int32_t* out) {
    auto it = Take(key);
    if (it == values_.end()) return absl::OkStatus();
    if (!absl::SimpleAtoi(it->second, out)) return Bad(key, it->second, "an integer");
    return absl::OkStatus();
  }
  absl::Status Float(const std::string& key, float* out) {
    auto it = Take(key);
    if (it == values_.end()) return absl::OkStatus();
    if (!absl::SimpleAtof(it->second, out)) return Bad(key, it->second, "a number");
    return absl::OkStatus();
  }
  absl::Status Choice(const std::string& key, const std::vector<std::string>& choices, std::string* out) {
    auto it = Take(key);
    if (it == values_.end()) return absl::OkStatus();
    for (const std::string& c : choices) {
      if (c == it->second) {
        *out = c;
        return absl::OkStatus();
      }
    }
    return Bad(key, it->second, absl::StrCat("one of ", absl::StrJoin(choices, "|")));
  }
  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  absl::Status String(const std::string& key, std::string* out) {
    auto it = Take(key);
    if (it == values_.end()) return absl::OkStatus();
    if (it->second.empty()) return Bad(key, it->second, "a non-empty string");
    *out = it->second;
    return absl::OkStatus();
  }
  absl::Status KvDtype(kernels::DType* out) {
    std::string v = "f32";
    KVC_RETURN_IF_ERROR(Choice("kv", {"f32", "bf16", "f16"}, &v));
    *out = v == "bf16" ? kernels::DType::kBF16 : v == "f16" ? kernels::DType::kF16 : kernels::DType::kF32;
    return absl::OkStatus();
  }
  // The keys nobody has asked for yet, as "key=value,..." (marked used):
  // what a wrapping policy passes on to its inner one.
  std::string TakeRest() {
    std::vector<std::string> rest;
    for (const auto& [key, value] : values_) {
      if (used_.count(key)) continue;
      used_[key] = true;
      rest.push_back(absl::StrCat(key, "=", value));
    }
    return absl::StrJoin(rest, ",");
  }
  absl::Status Finish() const {
    for (const auto& [key, value] : values_) {
      if (!used_.count(key)) {
        return absl::InvalidArgumentError(absl::StrCat("policy \"", spec_, "\": unknown key \"", key, "\""));
      }
    }
    return absl::OkStatus();
  }

 private:
  std::map<std::string, std::string>::const_iterator Take(const std::string& key) {
    used_[key] = true;
    return values_.find(key);
  }
  absl::Status Bad(const std::string& key, const std::string& value, const std::string& want) const {
    return absl::InvalidArgumentError(
        absl::StrCat("policy \"", spec_, "\": ", key, "=", value, " is not ", want));
  }

  std::string spec_;
  std::map<std::string, std::string> values_;
  std::map<std::string, bool> used_;
};

// less:inner=NAME,rank=R,seed=S,map=elu|exp,kernels=PATH,... : every other
// key goes to the inner policy. kernels=PATH loads trained per-layer maps
// (worker/cache/less_kernels.h; rank defaults to theirs, map and seed are
// then refused).
absl::StatusOr<std::unique_ptr<CachePolicy>> MakeLess(const model::ModelConfig& config, const std::string& spec,
                                                      Params& p) {
  LessOptions o;
  std::string inner;
  int32_t seed = static_cast<int32_t>(o.seed);
  KVC_RETURN_IF_ERROR(p.Choice("inner", {"cascading", "h2o", "streaming"}, &inner));
  if (inner.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy \"", spec, "\": less needs inner=cascading|h2o|streaming"));
  }
  KVC_RETURN_IF_ERROR(p.Int("rank", &o.rank));
  KVC_RETURN_IF_ERROR(p.Int("seed", &seed));
  std::string map = "elu";
  KVC_RETURN_IF_ERROR(p.Choice("map", {"elu", "exp"}, &map));
  o.positive_features = map == "exp";
  if (seed < 0) return absl::InvalidArgumentError(absl::StrCat("policy \"", spec, "\": seed ", seed, " < 0"));
  std::string kernels_path;
  KVC_RETURN_IF_ERROR(p.String("kernels", &kernels_path));
  if (!kernels_path.empty()) {
    if (p.Has("map") || p.Has("seed")) {
      return absl::InvalidArgumentError(
          absl::StrCat("policy \"", spec, "\": map and seed choose the fixed map, not trained kernels"));
    }
    KVC_ASSIGN_OR_RETURN(LessKernels k, ReadLessKernels(kernels_path));
    if (!p.Has("rank")) o.rank = k.rank;
    o.kernels = std::make_shared<const LessKernels>(std::move(k));
  }
  o.seed = static_cast<uint64_t>(seed);
  const std::string rest = p.TakeRest();
  KVC_RETURN_IF_ERROR(o.Validate());
  auto made = MakePolicy(config, rest.empty() ? inner : absl::StrCat(inner, ":", rest));
  if (!made.ok()) {
    return absl::Status(made.status().code(),
                        absl::StrCat("policy \"", spec, "\": inner ", made.status().message()));
  }
  KVC_ASSIGN_OR_RETURN(std::unique_ptr<Less> l, Less::Create(config, o, std::move(*made)));
  return std::unique_ptr<CachePolicy>(std::move(l));
}

// combined:sinks=4,subcaches=4,window=W,beta=B,k=K,theta=T,pool=P,
//   less=on|off,rank=R,seed=S,map=elu|exp,
//   refresh=similarity|fixed|off,stride=S,threshold=T,refresh_pool=P,refresh_output=full|hot
// budget=B: half the budget hot (sinks + the largest window of whole
// sub-caches), the rest selected.
absl::StatusOr<std::unique_ptr<CachePolicy>> MakeCombined(const model::ModelConfig& config, Params& p,
                                                          kernels::DType kv) {
  CombinedOptions o;
  o.hot.kv_dtype = kv;
  KVC_RETURN_IF_ERROR(p.Int("sinks", &o.hot.num_sinks));
  KVC_RETURN_IF_ERROR(p.Int("subcaches", &o.hot.num_subcaches));
  KVC_RETURN_IF_ERROR(p.Float("beta", &o.hot.beta));
  int32_t budget = 0;
  KVC_RETURN_IF_ERROR(p.Int("budget", &budget));
  if (budget > 0) {
    const int32_t c = std::max(1, o.hot.num_subcaches);
    o.hot.window = std::max(c, (budget / 2 - o.hot.num_sinks) / c * c);
    o.select_k = std::max(0, budget - o.hot.num_sinks - o.hot.window);
  }
  KVC_RETURN_IF_ERROR(p.Int("window", &o.hot.window));
  KVC_RETURN_IF_ERROR(p.Int("k", &o.select_k));
  KVC_RETURN_IF_ERROR(p.Float("theta", &o.theta));
  KVC_RETURN_IF_ERROR(p.Int("pool", &o.select_pool));
  // The positive random map by default: of the two fixed maps it is the one
  // that harms least without trained kernels (docs/EVALUATION.md).
  std::string less = "on", map = "exp", refresh = "similarity";
  KVC_RETURN_IF_ERROR(p.Choice("less", {"on", "off"}, &less));
  o.less = less == "on";
  KVC_RETURN_IF_ERROR(p.Int("rank", &o.less_options.rank));
  int32_t seed = static_cast<int32_t>(o.less_options.seed);
  KVC_RETURN_IF_ERROR(p.Int("seed", &seed));
  if (seed < 0) return absl::InvalidArgumentError(absl::StrCat("combined: seed ", seed, " < 0"));
  o.less_options.seed = static_cast<uint64_t>(seed);
  KVC_RETURN_IF_ERROR(p.Choice("map", {"elu", "exp"}, &map));
  o.less_options.positive_features = map == "exp";
  KVC_RETURN_IF_ERROR(p.Choice("refresh", {"similarity", "fixed", "off"}, &refresh));
  o.refresh = refresh != "off";
  o.refresh_options.mode = refresh == "fixed" ? RefreshMode::kFixed : RefreshMode::kSimilarity;
  KVC_RETURN_IF_ERROR(p.Int("stride", &o.refresh_options.stride));
  KVC_RETURN_IF_ERROR(p.Float("threshold", &o.refresh_options.threshold));
  KVC_RETURN_IF_ERROR(p.Int("refresh_pool", &o.refresh_options.pool_kernel));
  std::string refresh_output = "full";
  KVC_RETURN_IF_ERROR(p.Choice("refresh_output", {"full", "hot"}, &refresh_output));
  o.refresh_output_hot = refresh_output == "hot";
  KVC_RETURN_IF_ERROR(p.Finish());
  KVC_ASSIGN_OR_RETURN(std::unique_ptr<Combined> c, Combined::Create(config, o));
  return std::unique_ptr<CachePolicy>(std::move(c));
}

}  // namespace

std::vector<std::string> PolicyNames() {
  return {"full", "streaming", "cascading", "tokenselect", "h2o", "snapkv", "less", "refreshkv", "combined", "quest"};
}

absl::StatusOr<std::unique_ptr<CachePolicy>> MakePolicy(const model::ModelConfig& config, const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  KVC_ASSIGN_OR_RETURN(Params p, Params::Parse(spec, colon == std::string::npos ? "" : spec.substr(colon + 1)));
  if (name == "less") return MakeLess(config, spec, p);
  kernels::DType kv = kernels::DType::kF32;
  KVC_RETURN_IF_ERROR(p.KvDtype(&kv));
  if (name == "full") {
    KVC_RETURN_IF_ERROR(p.Finish());
    return std::unique_ptr<CachePolicy>(new FullAttention(config, kv));
  }
  if (name == "streaming" || name == "cascading") {
    CascadingOptions o;
    o.kv_dtype = kv;
    o.num_subcaches = name == "streaming" ? 1 : 4;
    KVC_RETURN_IF_ERROR(p.Int("sinks", &o.num_sinks));
    if (name == "cascading") {
      KVC_RETURN_IF_ERROR(p.Int("subcaches", &o.num_subcaches));
      KVC_RETURN_IF_ERROR(p.Float("beta", &o.beta));
    }
    int32_t budget = 0;
    KVC_RETURN_IF_ERROR(p.Int("budget", &budget));
    if (budget > 0) {
      // The largest window that fits with the sinks in `budget` tokens.
      o.window = (budget - o.num_sinks) / o.num_subcaches * o.num_subcaches;
    }
    KVC_RETURN_IF_ERROR(p.Int("window", &o.window));
    std::string positions = "cache";
    KVC_RETURN_IF_ERROR(p.Choice("positions", {"cache", "original"}, &positions));
    o.original_positions = positions == "original";
    KVC_RETURN_IF_ERROR(p.Finish());
    KVC_ASSIGN_OR_RETURN(std::unique_ptr<Cascading> c, Cascading::Create(config, o));
    return std::unique_ptr<CachePolicy>(std::move(c));
  }
  if (name == "tokenselect") {
    TokenSelectOptions o;
    o.kv_dtype = kv;
    int32_t budget = 0;
    KVC_RETURN_IF_ERROR(p.Int("budget", &budget));
    if (budget > 0) {
      // A quarter of the budget local, 4 initial tokens, the rest selected.
      o.n_local = budget / 4;
      o.k = std::max(1, budget - o.n_init - o.n_local);
    }
    KVC_RETURN_IF_ERROR(p.Int("init", &o.n_init));
    KVC_RETURN_IF_ERROR(p.Int("local", &o.n_local));
    KVC_RETURN_IF_ERROR(p.Int("k", &o.k));
    KVC_RETURN_IF_ERROR(p.Int("pool", &o.pool_kernel));
    KVC_RETURN_IF_ERROR(p.Float("theta", &o.theta));
    int32_t lse_block = 0;
    KVC_RETURN_IF_ERROR(p.Int("lse_block", &lse_block));
    o.lse_block = lse_block;
    KVC_RETURN_IF_ERROR(p.Finish());
    KVC_ASSIGN_OR_RETURN(std::unique_ptr<TokenSelectPolicy> t, TokenSelectPolicy::Create(config, o));
    return std::unique_ptr<CachePolicy>(std::move(t));
  }
  if (name == "h2o") {
    H2OOptions o;
    o.kv_dtype = kv;
    int32_t budget = 0;
    KVC_RETURN_IF_ERROR(p.Int("budget", &budget));
    if (budget > 0) {
      // Half recent, the rest heavy hitters (the paper's even split).
      o.recent = budget / 2;
      o.heavy = budget - o.recent;
    }
    KVC_RETURN_IF_ERROR(p.Int("heavy", &o.heavy));
    KVC_RETURN_IF_ERROR(p.Int("recent", &o.recent));
    std::string reduce = "sum", positions = "original";
    KVC_RETURN_IF_ERROR(p.Choice("reduce", {"sum", "max"}, &reduce));
    KVC_RETURN_IF_ERROR(p.Choice("positions", {"original", "compact"}, &positions));
    o.group_reduce = reduce == "max" ? kernels::GroupReduce::kMax : kernels::GroupReduce::kSum;
    o.compact_positions = positions == "compact";
    KVC_RETURN_IF_ERROR(p.Finish());
    KVC_ASSIGN_OR_RETURN(std::unique_ptr<H2O> h, H2O::Create(config, o));
    return std::unique_ptr<CachePolicy>(std::move(h));
  }
  if (name == "snapkv") {
    SnapKvOptions o;
    o.kv_dtype = kv;
    KVC_RETURN_IF_ERROR(p.Int("budget", &o.budget));
    // A window of 64, at most half the budget.
    o.window = std::max(1, std::min(64, o.budget / 2));
    KVC_RETURN_IF_ERROR(p.Int("window", &o.window));
    KVC_RETURN_IF_ERROR(p.Int("kernel", &o.pool_kernel));
    std::string positions = "original";
    KVC_RETURN_IF_ERROR(p.Choice("positions", {"original", "compact"}, &positions));
    o.compact_positions = positions == "compact";
    KVC_RETURN_IF_ERROR(p.Finish());
    KVC_ASSIGN_OR_RETURN(std::unique_ptr<SnapKv> s, SnapKv::Create(config, o));
    return std::unique_ptr<CachePolicy>(std::move(s));
  }
  if (name == "combined") return MakeCombined(config, p, kv);
  if (name == "quest") {
    QuestOptions o;
    o.kv_dtype = kv;
    KVC_RETURN_IF_ERROR(p.Int("page", &o.page_size));
    KVC_RETURN_IF_ERROR(p.Int("budget", &o.budget));
    std::string positions = "original";
    KVC_RETURN_IF_ERROR(p.Choice("positions", {"original", "compact"}, &positions));
    o.compact_positions = positions == "compact";
    KVC_RETURN_IF_ERROR(p.Finish());
    KVC_ASSIGN_OR_RETURN(std::unique_ptr<Quest> q, Quest::Create(config, o));
    return std::unique_ptr<CachePolicy>(std::move(q));
  }
  if (name == "refreshkv") {
    RefreshKvOptions o;
    o.kv_dtype = kv;
    KVC_RETURN_IF_ERROR(p.Int("budget", &o.k));  // K = B
    KVC_RETURN_IF_ERROR(p.Int("k", &o.k));
    KVC_RETURN_IF_ERROR(p.Int("stride", &o.stride));
    KVC_RETURN_IF_ERROR(p.Float("threshold", &o.threshold));
    KVC_RETURN_IF_ERROR(p.Int("pool", &o.pool_kernel));
    std::string mode = "similarity", positions = "original";
    KVC_RETURN_IF_ERROR(p.Choice("mode", {"similarity", "fixed"}, &mode));
    KVC_RETURN_IF_ERROR(p.Choice("positions", {"original", "compact"}, &positions));
    o.mode = mode == "fixed" ? RefreshMode::kFixed : RefreshMode::kSimilarity;
    o.compact_positions = positions == "compact";
    KVC_RETURN_IF_ERROR(p.Finish());
    KVC_ASSIGN_OR_RETURN(std::unique_ptr<RefreshKv> r, RefreshKv::Create(config, o));
    return std::unique_ptr<CachePolicy>(std::move(r));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown policy \"", name, "\" (known: ",
                                                 absl::StrJoin(PolicyNames(), ", "), ")"));
}

}  // namespace kvc::cache
