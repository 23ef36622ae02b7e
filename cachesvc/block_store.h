// BlockStore: the one interface both tiers implement (host memory, RocksDB).
// Tiering is a composition of two BlockStores (TieredStore), never an `if`
// inside one.
#ifndef KVC_CACHESVC_BLOCK_STORE_H_
#define KVC_CACHESVC_BLOCK_STORE_H_

#include <cstdint>
#include <functional>
#include "absl/strings/string_view.h"

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cachesvc/block_key.h"
#include "cachesvc/cached_block.h"

namespace kvc {

// A snapshot of one tier's counters.
struct TierUsage {
  uint64_t bytes = 0;         // charged bytes held now (never above budget_bytes)
  uint64_t budget_bytes = 0;  // the tier's byte budget
  uint64_t blocks = 0;        // blocks held now
  uint64_t hits = 0;          // Get calls that found the block
  uint64_t misses = 0;        // Get calls that did not
  uint64_t evictions = 0;     // blocks removed to stay within a budget or quota
  uint64_t corrupt = 0;       // blocks dropped because they failed their checksum
};

struct PutOptions {
  // Return only once the block is synced to stable storage. Tiers with no
  // stable storage ignore it.
  bool sync = false;
};

// Per-tenant byte quota for each tier; 0 means no quota. Must be thread-safe.
using QuotaFn = std::function<uint64_t(absl::string_view tenant)>;

// Which blocks are pinned at a given time. Thread-safe. Implementations must
// not call back into a BlockStore (the host tier calls it under its locks).
class PinOracle {
 public:
  virtual ~PinOracle() = default;
  virtual bool IsPinned(const BlockKey& key, absl::Time now) const = 0;
};

// Thread-safe: every method may be called concurrently from any thread.
class BlockStore {
 public:
  virtual ~BlockStore() = default;

  // "host" or "disk"; used in metrics and logs.
  virtual absl::string_view name() const = 0;

  // Stores `block`, replacing a block with the same key. RESOURCE_EXHAUSTED
  // when it cannot be admitted: larger than the budget, everything that would
  // have to be evicted is pinned, or the tenant is at its quota with nothing
  // of its own left to evict. Other errors are storage failures.
  virtual absl::Status Put(const BlockPtr& block, const PutOptions& options) = 0;

  // NOT_FOUND on a miss. DATA_LOSS when the stored copy failed its checksum;
  // it has been dropped and counted. Counts a hit or a miss.
  virtual absl::StatusOr<BlockPtr> Get(const BlockKey& key) = 0;

  // Presence, without reading the payload or counting a hit or miss.
  virtual bool Contains(const BlockKey& key) const = 0;

  // Removes the block; returns whether it was present.
  virtual absl::StatusOr<bool> Erase(const BlockKey& key) = 0;

  virtual TierUsage Usage() const = 0;

  // Charged bytes of `tenant`'s blocks held in this tier.
  virtual uint64_t TenantBytes(absl::string_view tenant) const = 0;

  // Makes every acknowledged Put durable. Tiers with no stable storage: OK.
  virtual absl::Status Flush() { return absl::OkStatus(); }

  // Calls `fn` for each block held, from a snapshot taken at the call.
  // Optional: UNIMPLEMENTED where a tier cannot enumerate cheaply.
  virtual absl::Status ForEach(absl::FunctionRef<void(const BlockPtr&)> fn) {
    return absl::UnimplementedError(absl::StrCat(name(), " tier cannot enumerate blocks"));
  }
};

}  // namespace kvc

#endif  // KVC_CACHESVC_BLOCK_STORE_H_
