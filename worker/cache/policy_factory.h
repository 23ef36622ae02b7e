// Builds a cache policy from a one-line spec, as the worker's flags and the
// evaluation tables name them:
//   full
//   streaming:sinks=4,window=252          (StreamingLLM; default sinks 4)
//   cascading:sinks=4,subcaches=4,window=252,beta=0.999,positions=cache|original
//   tokenselect:init=4,k=92,local=32,pool=0,theta=0.9,lse_block=0
//   h2o:heavy=128,recent=128,reduce=sum|max,positions=original|compact
//   snapkv:budget=256,window=64,kernel=5,positions=original|compact
//   quest:page=16,budget=256,positions=original|compact   (worker/cache/quest.h)
//   refreshkv:k=256,stride=10,threshold=0.9,mode=similarity|fixed,pool=7,
//       positions=original|compact   (budget=B: K = B; worker/cache/refresh_kv.h)
//   less:inner=cascading|h2o|streaming,rank=8,seed=1,map=elu|exp,...   (LESS on top of
//       the inner policy, worker/cache/less.h; every other key, budget and
//       kv included, is the inner policy's; kernels=FILE loads trained
//       per-layer maps, worker/cache/less_kernels.h, instead of map and seed)
//   combined:sinks=4,subcaches=4,window=256,beta=0.999,k=128,theta=0.5,pool=0,
//       less=on|off,rank=8,seed=1,map=exp|elu,
//       refresh=similarity|fixed|off,stride=10,threshold=0.9,refresh_pool=7,
//       refresh_output=full|hot
//       (cascading hot set + LESS + TokenSelect + RefreshKV,
//       worker/cache/combined.h; budget=B: half hot, the rest selected)
// Every policy also takes kv=f32|bf16|f16. budget=B (tokens of KV per
// layer) sets the window of streaming and cascading to the largest multiple
// of the sub-caches that fits beside the sinks; for tokenselect it sets
// local = B/4, init = 4, k = the rest; for h2o recent = B/2, heavy = the
// rest; for snapkv the tokens kept at the end of the prompt, with window =
// min(64, B/2); for quest the tokens attended per decode step (B / page
// pages; every token stays resident). Explicit values win. Unknown names, unknown keys and
// bad values are InvalidArgument naming them.
#ifndef KVC_WORKER_CACHE_POLICY_FACTORY_H_
#define KVC_WORKER_CACHE_POLICY_FACTORY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/cache/policy.h"
#include "worker/model/checkpoint.h"

namespace kvc::cache {

absl::StatusOr<std::unique_ptr<CachePolicy>> MakePolicy(const model::ModelConfig& config, const std::string& spec);

// The policy names MakePolicy knows, for --help texts.
std::vector<std::string> PolicyNames();

}  // namespace kvc::cache

#endif  // KVC_WORKER_CACHE_POLICY_FACTORY_H_
