// Placement: which cache-service member holds a block, by rendezvous
// (highest random weight) hashing over the cluster's members.
//
// Every member gets a score per block, a hash of (the block's placement id,
// the member's name); a block lives on the member with the highest score,
// its replica (and its fallback while that member is down) on the next one.
// Adding a member moves only the blocks the newcomer now wins (about
// 1/(N+1) of them, all onto the newcomer); removing one moves only the
// blocks it held, spread over the others. No virtual nodes, no table: a
// rank is O(N) hashes, and N is a handful of cache-service instances.
//
// The placement id is the hash of (tenant, model, chain hash), deliberately
// not the layer: every layer of one block lives on one member, so the
// service's Lookup ("how many leading hashes are cached for every one of
// these layers") can be asked of each member for the hashes it owns.
#ifndef KVC_WORKER_KV_PLACEMENT_H_
#define KVC_WORKER_KV_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/hash.h"

namespace kvc {

// Immutable, so thread-safe.
class Placement {
 public:
  // `members` are names that identify a member across processes and
  // restarts (the client uses "host:port" of its gRPC endpoint). Duplicates
  // are dropped; the order does not matter.
  explicit Placement(std::vector<std::string> members);

  // Stable across processes, builds and architectures.
  static uint64_t BlockId(absl::string_view tenant, absl::string_view model, const Hash128& hash);

  // The indices (into members()) of the `k` highest-scoring members for
  // `id`, best first; fewer when there are fewer members.
  std::vector<int> Rank(uint64_t id, size_t k) const;
  // Rank(id, 1)[0]; -1 with no members.
  int First(uint64_t id) const;

  // Sorted, without duplicates.
  const std::vector<std::string>& members() const { return members_; }
  size_t size() const { return members_.size(); }

 private:
  uint64_t Score(uint64_t id, size_t member) const;

  std::vector<std::string> members_;
  std::vector<uint64_t> seeds_;  // Hash64 of each member's name
};

}  // namespace kvc

#endif  // KVC_WORKER_KV_PLACEMENT_H_
