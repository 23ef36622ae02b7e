#include "cachesvc/host_tier.h"

#include <algorithm>
#include <array>
#include <deque>
#include <list>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/hash.h"

namespace kvc {
namespace {

constexpr uint32_t kMaxShards = 4096;
constexpr uint64_t kMinShardBytes = 4096;
constexpr uint8_t kMaxFreq = 3;
constexpr size_t kMinGhostEntries = 64;

}  // namespace

absl::Status HostTierOptions::Validate() const {
  if (num_shards == 0 || num_shards > kMaxShards || (num_shards & (num_shards - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host tier: num_shards must be a power of two in [1, ", kMaxShards, "], got ", num_shards));
  }
  if (capacity_bytes / num_shards < kMinShardBytes) {
    return absl::InvalidArgumentError(absl::StrCat("host tier: capacity_bytes ", capacity_bytes,
                                                   " gives each of ", num_shards,
                                                   " shards less than ", kMinShardBytes, " bytes"));
  }
  if (!(small_queue_fraction > 0 && small_queue_fraction < 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "host tier: small_queue_fraction must be in (0, 1), got ", small_queue_fraction));
  }
  if (clock == nullptr) return absl::InvalidArgumentError("host tier: clock is null");
  return absl::OkStatus();
}

// Charged bytes per tenant across the whole tier. Striped by tenant so shards
// rarely contend; TryAdjust makes the quota check and the charge one step, so
// concurrent Puts of one tenant into different shards cannot both pass.
class HostTier::TenantLedger {
 public:
  // bytes(tenant) += add - remove, unless quota > 0 and the result would grow
  // above quota; then changes nothing and returns by how much it would.
  uint64_t TryAdjust(absl::string_view tenant, uint64_t remove, uint64_t add, uint64_t quota) {
    Stripe& s = StripeFor(tenant);
    absl::MutexLock lock(&s.mu);
    auto it = s.bytes.find(tenant);
    const uint64_t now = it == s.bytes.end() ? 0 : it->second;
    const uint64_t next = now - remove + add;  // REQUIRES remove <= now
    if (quota > 0 && add > remove && next > quota) return next - quota;
    if (next == 0) {
      if (it != s.bytes.end()) s.bytes.erase(it);
    } else if (it != s.bytes.end()) {
      it->second = next;
    } else {
      s.bytes.emplace(std::string(tenant), next);
    }
    return 0;
  }
  void Adjust(absl::string_view tenant, uint64_t remove, uint64_t add) {
    TryAdjust(tenant, remove, add, /*quota=*/0);
  }
  uint64_t Bytes(absl::string_view tenant) const {
    Stripe& s = StripeFor(tenant);
    absl::MutexLock lock(&s.mu);
    auto it = s.bytes.find(tenant);
    return it == s.bytes.end() ? 0 : it->second;
  }

 private:
  struct Stripe {
    absl::Mutex mu;
    absl::flat_hash_map<std::string, uint64_t> bytes ABSL_GUARDED_BY(mu);
  };
  Stripe& StripeFor(absl::string_view tenant) const {
    return stripes_[Hash64(tenant) % stripes_.size()];
  }
  mutable std::array<Stripe, 16> stripes_;
};

// One stripe of the tier: an S3-FIFO over the blocks whose ShardHash selects
// it, within `capacity` charged bytes. Thread-safe: every method takes mu_.
class HostTier::Shard {
 public:
  Shard(const HostTierOptions& options, TenantLedger* ledger)
      : capacity_(options.capacity_bytes / options.num_shards),
        small_target_(static_cast<uint64_t>(capacity_ * options.small_queue_fraction)),
        ghost_entries_(options.ghost_entries_per_shard),
        num_shards_(options.num_shards),
        pins_(options.pins),
        clock_(options.clock),
        on_evicting_(&options.on_evicting),
        ledger_(ledger) {}

  // Stores `block`; `quota` is its tenant's quota (0 = none). Appends what it
  // evicts to `evicted`, also when it then fails.
  absl::Status Put(const BlockPtr& block, uint64_t quota, std::vector<BlockPtr>* evicted) {
    const BlockKey& key = block->key();
    const uint64_t charge = block->charge();
    if (charge > capacity_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("host tier: block ", key.DebugString(), " charges ", charge,
                       " bytes, more than a shard holds (", capacity_, " bytes = capacity / ",
                       num_shards_, " shards)"));
    }
    if (quota > 0 && charge > quota) {
      return absl::ResourceExhaustedError(
          absl::StrCat("host tier: block ", key.DebugString(), " charges ", charge,
                       " bytes, more than tenant '", key.tenant, "' quota of ", quota, " bytes"));
    }
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    auto found = index_.find(key);
    Node* const old = found == index_.end() ? nullptr : &*found->second;
    const uint64_t old_charge = old ? old->block->charge() : 0;

    // Reserve the tenant's bytes first, evicting its own blocks if over quota.
    while (uint64_t over = ledger_->TryAdjust(key.tenant, old_charge, charge, quota)) {
      if (EvictTenant(key.tenant, over, old, now, evicted) == 0) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "host tier: tenant '", key.tenant, "' is at its quota of ", quota, " bytes (holds ",
            ledger_->Bytes(key.tenant),
            ") and no unpinned block of its own in this shard to evict for ", charge, " bytes"));
      }
    }
    if (!MakeRoom(charge, old, now, evicted)) {
      ledger_->Adjust(key.tenant, charge, old_charge);  // undo the reservation
      return absl::ResourceExhaustedError(
          absl::StrCat("host tier: no room for block ", key.DebugString(), " (", charge,
                       " bytes): every evictable block in its shard is pinned (", used_, " of ",
                       capacity_, " bytes in use)"));
    }

    used_ = used_ - old_charge + charge;
    if (old != nullptr) {
      if (!old->in_main) small_bytes_ = small_bytes_ - old_charge + charge;
      old->block = block;
      return absl::OkStatus();
    }
    const bool to_main = GhostTake(key.ShardHash());
    Queue& q = to_main ? main_ : small_;
    q.push_front(Node{block, 0, to_main});
    if (!to_main) small_bytes_ += charge;
    index_.emplace(key, q.begin());
    return absl::OkStatus();
  }

  absl::StatusOr<BlockPtr> Get(const BlockKey& key) {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end()) {
      ++misses_;
      return absl::NotFoundError(absl::StrCat("host tier: no block ", key.DebugString()));
    }
    ++hits_;
    Node& n = *it->second;
    n.freq = std::min<uint8_t>(kMaxFreq, n.freq + 1);
    return n.block;
  }

  bool Contains(const BlockKey& key) const {
    absl::ReaderMutexLock lock(&mu_);
    return index_.contains(key);
  }

  bool Erase(const BlockKey& key) {
    absl::MutexLock lock(&mu_);
    auto it = index_.find(key);
    if (it == index_.end()) return false;
    Unlink(it->second);
    return true;
  }

  void AddUsage(TierUsage* u) const {
    absl::ReaderMutexLock lock(&mu_);
    u->bytes += used_;
    u->budget_bytes += capacity_;
    u->blocks += index_.size();
    u->hits += hits_;
    u->misses += misses_;
    u->evictions += evictions_;
  }

  void Snapshot(std::vector<BlockPtr>* out) const {
    absl::ReaderMutexLock lock(&mu_);
    for (const Queue* q : {&small_, &main_}) {
      for (const Node& n : *q) out->push_back(n.block);
    }
  }

 private:
  struct Node {
    BlockPtr block;
    uint8_t freq;  // 0..kMaxFreq
    bool in_main;  // which queue holds it
  };
  // Head (front) is the newest; eviction looks at the tail (back).
  using Queue = std::list<Node>;
  using Handle = Queue::iterator;

  bool Evictable(Handle h, const Node* keep, absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return &*h != keep && (pins_ == nullptr || !pins_->IsPinned(h->block->key(), now));
  }

  // Evicts until `charge` bytes fit, treating `keep` (the block `charge`
  // replaces, or null) as freed but never evicting it. False when only
  // pinned blocks are left to evict.
  bool MakeRoom(uint64_t charge, const Node* keep, absl::Time now, std::vector<BlockPtr>* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const uint64_t keep_charge = keep ? keep->block->charge() : 0;
    while (used_ - keep_charge + charge > capacity_) {
      const bool small_first = small_bytes_ > small_target_ || main_.empty();
      if (!(small_first ? EvictFromSmall(keep, now, evicted) : EvictFromMain(keep, now, evicted)) &&
          !(small_first ? EvictFromMain(keep, now, evicted) : EvictFromSmall(keep, now, evicted))) {
        return false;
      }
    }
    return true;
  }

  // Evicts one block from the small FIFO's tail, promoting re-read blocks to
  // main on the way. False when every block left in small is unevictable.
  bool EvictFromSmall(const Node* keep, absl::Time now, std::vector<BlockPtr>* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // Unevictable blocks rotated to the head since the last change; once it
    // reaches small_.size() every block left has been seen and skipped.
    size_t skipped = 0;
    while (skipped < small_.size()) {
      Handle h = std::prev(small_.end());
      if (!Evictable(h, keep, now)) {
        small_.splice(small_.begin(), small_, h);
        ++skipped;
      } else if (h->freq > 0) {
        h->freq = 0;
        h->in_main = true;
        small_bytes_ -= h->block->charge();
        main_.splice(main_.begin(), small_, h);
      } else {
        GhostAdd(h->block->key().ShardHash());
        Evict(h, evicted);
        return true;
      }
    }
    return false;
  }

  // Evicts one block from the main FIFO's tail, giving blocks with a nonzero
  // frequency another lap. False when every block in main is unevictable.
  bool EvictFromMain(const Node* keep, absl::Time now, std::vector<BlockPtr>* evicted)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t skipped = 0;  // as in EvictFromSmall; terminates as freqs only fall
    while (skipped < main_.size()) {
      Handle h = std::prev(main_.end());
      if (!Evictable(h, keep, now)) {
        main_.splice(main_.begin(), main_, h);
        ++skipped;
      } else if (h->freq > 0) {
        --h->freq;
        main_.splice(main_.begin(), main_, h);
        skipped = 0;
      } else {
        Evict(h, evicted);
        return true;
      }
    }
    return false;
  }

  // Evicts `tenant`'s evictable blocks, oldest first (small's tail to head,
  // then main's), until `bytes` are freed. Returns the bytes freed.
  uint64_t EvictTenant(absl::string_view tenant, uint64_t bytes, const Node* keep, absl::Time now,
                       std::vector<BlockPtr>* evicted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    uint64_t freed = 0;
    for (Queue* q : {&small_, &main_}) {
      Handle it = q->end();
      while (freed < bytes && it != q->begin()) {
        Handle cur = std::prev(it);
        if (cur->block->key().tenant == tenant && Evictable(cur, keep, now)) {
          freed += cur->block->charge();
          Evict(cur, evicted);  // `it` stays valid
        } else {
          it = cur;
        }
      }
    }
    return freed;
  }

  void Evict(Handle h, std::vector<BlockPtr>* evicted) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++evictions_;
    evicted->push_back(Unlink(h));
    if (*on_evicting_) (*on_evicting_)(evicted->back());
  }

  // Removes `h` from the index, its queue and the byte counts.
  BlockPtr Unlink(Handle h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    BlockPtr block = std::move(h->block);
    const uint64_t charge = block->charge();
    used_ -= charge;
    if (h->in_main) {
      main_.erase(h);
    } else {
      small_bytes_ -= charge;
      small_.erase(h);
    }
    index_.erase(block->key());
    ledger_->Adjust(block->key().tenant, charge, 0);
    return block;
  }

  void GhostAdd(uint64_t hash) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const uint64_t seq = ++ghost_seq_;
    ghost_[hash] = seq;
    ghost_fifo_.emplace_back(hash, seq);
    const size_t limit =
        ghost_entries_ > 0 ? ghost_entries_ : std::max(kMinGhostEntries, index_.size());
    while (ghost_fifo_.size() > limit) {
      auto [old_hash, old_seq] = ghost_fifo_.front();
      ghost_fifo_.pop_front();
      auto it = ghost_.find(old_hash);
      if (it != ghost_.end() && it->second == old_seq) ghost_.erase(it);
    }
  }

  // Whether `hash` was recently evicted from small; forgets it if so.
  bool GhostTake(uint64_t hash) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return ghost_.erase(hash) > 0;
  }

  const uint64_t capacity_;
  const uint64_t small_target_;
  const size_t ghost_entries_;
  const uint32_t num_shards_;
  const PinOracle* const pins_;
  Clock* const clock_;
  // HostTier::options_ outlives every shard.
  const std::function<void(const BlockPtr&)>* const on_evicting_;
  TenantLedger* const ledger_;

  mutable absl::Mutex mu_;
  Queue small_ ABSL_GUARDED_BY(mu_);
  Queue main_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<BlockKey, Handle> index_ ABSL_GUARDED_BY(mu_);
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;         // charged bytes in both queues
  uint64_t small_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // charged bytes in small_
  // Ghost FIFO: hash -> sequence number of its newest entry in ghost_fifo_;
  // older entries of a re-added hash are skipped when they reach the front.
  absl::flat_hash_map<uint64_t, uint64_t> ghost_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<uint64_t, uint64_t>> ghost_fifo_ ABSL_GUARDED_BY(mu_);
  uint64_t ghost_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
};

absl::StatusOr<std::unique_ptr<HostTier>> HostTier::Create(const HostTierOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return std::unique_ptr<HostTier>(new HostTier(options));
}

HostTier::HostTier(HostTierOptions options)
    : options_(std::move(options)), ledger_(std::make_unique<TenantLedger>()) {
  shards_.reserve(options_.num_shards);
  for (uint32_t i = 0; i < options_.num_shards; ++i) {
    shards_.push_back(std::make_unique<Shard>(options_, ledger_.get()));
  }
}

HostTier::~HostTier() = default;

HostTier::Shard& HostTier::ShardFor(const BlockKey& key) const {
  return *shards_[key.ShardHash() & (shards_.size() - 1)];
}

absl::Status HostTier::Put(const BlockPtr& block, const PutOptions& /*options*/) {
  if (block == nullptr) return absl::InvalidArgumentError("host tier: null block");
  const uint64_t quota = options_.tenant_quota ? options_.tenant_quota(block->key().tenant) : 0;
  std::vector<BlockPtr> evicted;
  absl::Status status = ShardFor(block->key()).Put(block, quota, &evicted);
  if (!evicted.empty() && options_.on_evict) options_.on_evict(std::move(evicted));
  return status;
}

absl::StatusOr<BlockPtr> HostTier::Get(const BlockKey& key) { return ShardFor(key).Get(key); }

bool HostTier::Contains(const BlockKey& key) const { return ShardFor(key).Contains(key); }

absl::StatusOr<bool> HostTier::Erase(const BlockKey& key) { return ShardFor(key).Erase(key); }

TierUsage HostTier::Usage() const {
  TierUsage u;
  for (const auto& shard : shards_) shard->AddUsage(&u);
  return u;
}

uint64_t HostTier::TenantBytes(absl::string_view tenant) const { return ledger_->Bytes(tenant); }

absl::Status HostTier::ForEach(absl::FunctionRef<void(const BlockPtr&)> fn) {
  std::vector<BlockPtr> blocks;
  for (const auto& shard : shards_) shard->Snapshot(&blocks);
  for (const BlockPtr& b : blocks) fn(b);
  return absl::OkStatus();
}

}  // namespace kvc
