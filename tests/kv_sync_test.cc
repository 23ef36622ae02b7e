// A sequence joined to the cache service (worker/kv): the block codec against
// the service's own validation, the write-through writer's backpressure,
// degraded mode and catch-up, and prefix reuse equal to recomputing.
//
// The service here is an in-memory BlockClient (the process edge); the same
// flows against a real kvcached over gRPC and UCX are in
// kv_sync_service_test.cc.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "cachesvc/cached_block.h"
#include "cachesvc/limits.h"
#include "gtest/gtest.h"
#include "kvcache/v1/cache.pb.h"
#include "tests/model_test_util.h"
#include "worker/cache/combined.h"
#include "worker/cache/full_attention.h"
#include "worker/cache/policy_factory.h"
#include "worker/cache/refresh_kv.h"
#include "worker/cache/token_select.h"
#include "worker/kv/block_codec.h"
#include "worker/kv/block_writer.h"
#include "worker/kv/kv_metrics.h"
#include "worker/kv/kv_sync.h"
#include "worker/kv/resilient_block_client.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;

// The cache service as a worker sees it, in memory: blocks by key, a switch
// that makes it unreachable, a gate that holds Puts, and a way to refuse.
class FakeService : public BlockClient {
 public:
  absl::string_view transport() const override { return "fake"; }

  absl::Status Put(std::span<const absl::string_view> blocks, bool) override {
    absl::MutexLock lock(&mu_);
    ++puts_;
    auto open = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !held_; };
    mu_.Await(absl::Condition(&open));
    if (!reachable_) return absl::UnavailableError("fake service: connection refused");
    if (!refuse_.ok()) return refuse_;
    for (absl::string_view b : blocks) {
      absl::StatusOr<BlockPtr> block = CachedBlock::FromRequest(std::string(b), Limits());
      if (!block.ok()) return block.status();
      store_[(*block)->key()] = std::string(b);
    }
    return absl::OkStatus();
  }

  absl::Status Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) override {
    absl::MutexLock lock(&mu_);
    if (!reachable_) return absl::UnavailableError("fake service: connection refused");
    for (size_t i = 0; i < keys.size(); ++i) {
      GotBlock got;
      got.index = static_cast<uint32_t>(i);
      auto it = store_.find(keys[i]);
      if (it == store_.end()) {
        got.status = absl::NotFoundError("miss");
      } else {
        got.tier = BlockTier::kHost;
        absl::StatusOr<BlockView> view = BlockView::Parse(it->second);
        if (view.ok()) got.block = *view;
        got.status = view.status();
      }
      on_block(got);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint32_t> Lookup(absl::string_view tenant, absl::string_view model, std::span<const uint32_t> layers,
                                  std::span<const Hash128> hashes) override {
    absl::MutexLock lock(&mu_);
    if (!reachable_) return absl::UnavailableError("fake service: connection refused");
    uint32_t n = 0;
    for (const Hash128& h : hashes) {
      for (const uint32_t l : layers) {
        if (!store_.contains(BlockKey{std::string(tenant), std::string(model), l, h})) return n;
      }
      ++n;
    }
    return n;
  }

  absl::StatusOr<bool> Healthy() override {
    absl::MutexLock lock(&mu_);
    return reachable_;
  }

  void SetReachable(bool r) {
    absl::MutexLock lock(&mu_);
    reachable_ = r;
  }
  void Hold(bool h) {
    absl::MutexLock lock(&mu_);
    held_ = h;
  }
  void Refuse(absl::Status s) {
    absl::MutexLock lock(&mu_);
    refuse_ = std::move(s);
  }
  void Corrupt(const BlockKey& key) {
    absl::MutexLock lock(&mu_);
    std::string& wire = store_.at(key);
    wire[wire.size() - 20] ^= 0x5a;  // a byte of v
  }
  size_t size() {
    absl::MutexLock lock(&mu_);
    return store_.size();
  }
  bool Has(const BlockKey& key) {
    absl::MutexLock lock(&mu_);
    return store_.contains(key);
  }
  std::string Wire(const BlockKey& key) {
    absl::MutexLock lock(&mu_);
    return store_.at(key);
  }
  int puts() {
    absl::MutexLock lock(&mu_);
    return puts_;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<BlockKey, std::string> store_ ABSL_GUARDED_BY(mu_);
  bool reachable_ ABSL_GUARDED_BY(mu_) = true;
  bool held_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status refuse_ ABSL_GUARDED_BY(mu_);
  int puts_ ABSL_GUARDED_BY(mu_) = 0;
};

// One connection to a FakeService (what a factory makes).
class FakeConnection : public BlockClient {
 public:
  explicit FakeConnection(FakeService* svc) : svc_(svc) {}
  absl::string_view transport() const override { return "fake"; }
  absl::Status Put(std::span<const absl::string_view> blocks, bool wt) override { return svc_->Put(blocks, wt); }
  absl::Status Get(std::span<const BlockKey> keys, absl::FunctionRef<void(GotBlock&)> on_block) override {
    return svc_->Get(keys, on_block);
  }
  absl::StatusOr<uint32_t> Lookup(absl::string_view t, absl::string_view m, std::span<const uint32_t> l,
                                  std::span<const Hash128> h) override {
    return svc_->Lookup(t, m, l, h);
  }
  absl::StatusOr<bool> Healthy() override { return svc_->Healthy(); }

 private:
  FakeService* svc_;
};

std::vector<float> Ramp(int64_t n, float scale) {
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = scale * static_cast<float>((i * 37) % 101 - 50);
  return x;
}

KvBlockShape Shape(int dtype = v1::DTYPE_FP32) {
  KvBlockShape s;
  s.block_tokens = 8;
  s.num_kv_heads = 2;
  s.head_dim = 16;
  s.dtype = dtype;
  return s;
}

BlockKey Key(uint32_t layer, uint64_t h) { return BlockKey{"t", "m", layer, Hash128{h, ~h}}; }

TEST(KvBlockCodecTest, EncodedBlocksPassTheServicesValidationAndRoundTrip) {
  const KvBlockShape shape = Shape();
  const std::vector<float> k = Ramp(shape.elements(), 0.25f), v = Ramp(shape.elements(), -0.5f);
  const std::string wire = EncodeKvBlock(Key(3, 7), shape, 16, k.data(), v.data());
  // The service accepts it as sent (its own parser and checks).
  absl::StatusOr<BlockPtr> stored = CachedBlock::FromRequest(wire, Limits());
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ((*stored)->key(), Key(3, 7));
  v1::Block proto;
  ASSERT_TRUE(proto.ParseFromString(wire));
  ASSERT_EQ(proto.positions_size(), 8);
  EXPECT_EQ(proto.positions(0), 16);
  EXPECT_EQ(proto.positions(7), 23);

  absl::StatusOr<BlockView> view = BlockView::Parse(wire);
  ASSERT_TRUE(view.ok());
  std::vector<float> k2(shape.elements()), v2(shape.elements());
  ASSERT_TRUE(DecodeKvBlock(*view, shape, k2.data(), v2.data()).ok());
  EXPECT_EQ(k2, k);
  EXPECT_EQ(v2, v);
}

TEST(KvBlockCodecTest, HalfPrecisionBlocksRoundToTheirType) {
  for (int dtype : {v1::DTYPE_BF16, v1::DTYPE_FP16}) {
    const KvBlockShape shape = Shape(dtype);
    const std::vector<float> k = Ramp(shape.elements(), 0.01f), v = Ramp(shape.elements(), 0.02f);
    const std::string wire = EncodeKvBlock(Key(0, 1), shape, 0, k.data(), v.data());
    EXPECT_TRUE(CachedBlock::FromRequest(wire, Limits()).ok());
    EXPECT_LT(wire.size(), 2 * static_cast<size_t>(shape.elements()) * 2 + 256);
    std::vector<float> k2(shape.elements()), v2(shape.elements());
    ASSERT_TRUE(DecodeKvBlock(*BlockView::Parse(wire), shape, k2.data(), v2.data()).ok());
    for (int64_t i = 0; i < shape.elements(); ++i) {
      EXPECT_NEAR(k2[i], k[i], std::abs(k[i]) * 1e-2 + 1e-6) << dtype;
      EXPECT_NEAR(v2[i], v[i], std::abs(v[i]) * 1e-2 + 1e-6) << dtype;
    }
  }
}

TEST(KvBlockCodecTest, AWrongShapeOrCorruptBytesAreNamed) {
  const KvBlockShape shape = Shape();
  const std::vector<float> k = Ramp(shape.elements(), 1.0f);
  std::string wire = EncodeKvBlock(Key(0, 1), shape, 0, k.data(), k.data());
  std::vector<float> out(shape.elements() * 2);
  KvBlockShape other = shape;
  other.head_dim = 8;
  absl::Status s = DecodeKvBlock(*BlockView::Parse(wire), other, out.data(), out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_dim is 16, expected 8"), std::string::npos) << s;
  other = shape;
  other.dtype = v1::DTYPE_BF16;
  s = DecodeKvBlock(*BlockView::Parse(wire), other, out.data(), out.data());
  EXPECT_NE(s.message().find("dtype is 1, expected 3"), std::string::npos) << s;
  wire[wire.size() - 20] ^= 1;
  s = DecodeKvBlock(*BlockView::Parse(wire), shape, out.data(), out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_FALSE(Shape(0).Validate().ok());
}

TEST(KvBlockCodecTest, PrefixHashesChainWholeBlocksOnly) {
  std::vector<int32_t> tokens(21);
  for (int i = 0; i < 21; ++i) tokens[i] = i * 3;
  const std::vector<Hash128> h = PrefixHashes(tokens, 8);
  ASSERT_EQ(h.size(), 2u);
  const Hash128 h0 = ChainHash(Hash128{}, std::span<const int32_t>(tokens).first(8));
  EXPECT_EQ(h[0], h0);
  EXPECT_EQ(h[1], ChainHash(h0, std::span<const int32_t>(tokens).subspan(8, 8)));
  // A different earlier token changes every later hash.
  tokens[0] = 1;
  EXPECT_NE(PrefixHashes(tokens, 8)[1], h[1]);
}

std::string Blob(int i, size_t bytes = 1000) {
  const KvBlockShape shape = Shape();
  std::vector<float> k = Ramp(shape.elements(), static_cast<float>(i + 1));
  (void)bytes;
  return EncodeKvBlock(Key(0, static_cast<uint64_t>(i) + 1), shape, 0, k.data(), k.data());
}

BlockWriterOptions SmallWriter(size_t max_blocks) {
  BlockWriterOptions o;
  o.max_queued_bytes = max_blocks * Blob(0).size();
  o.max_batch_blocks = 2;
  o.retry_initial = absl::Milliseconds(1);
  o.retry_max = absl::Milliseconds(5);
  return o;
}

TEST(ResilientBlockClientTest, RemakesItsClientAfterTheServiceComesBack) {
  FakeService svc;
  FakeClock clock;
  int made = 0;
  bool refuse_connect = false;
  ResilientBlockClient client(
      [&]() -> absl::StatusOr<std::unique_ptr<BlockClient>> {
        if (refuse_connect) return absl::UnavailableError("connection refused");
        ++made;
        return std::unique_ptr<BlockClient>(new FakeConnection(&svc));
      },
      absl::Seconds(1), &clock);
  EXPECT_EQ(client.transport(), "none");
  const std::string b = Blob(0);
  const absl::string_view view = b;
  ASSERT_TRUE(client.Put(std::span(&view, 1), false).ok());
  EXPECT_EQ(made, 1);
  EXPECT_EQ(client.transport(), "fake");
  // The service goes away: the call fails, the connection is dropped, and
  // until the retry interval passes no new one is tried.
  svc.SetReachable(false);
  refuse_connect = true;
  EXPECT_EQ(client.Put(std::span(&view, 1), false).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(client.Healthy().status().code(), absl::StatusCode::kUnavailable);
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(client.Put(std::span(&view, 1), false).code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(made, 1);
  // Back: after the interval, a new connection.
  svc.SetReachable(true);
  refuse_connect = false;
  EXPECT_EQ(client.Put(std::span(&view, 1), false).code(), absl::StatusCode::kUnavailable);  // within the interval
  clock.Advance(absl::Seconds(2));
  ASSERT_TRUE(client.Put(std::span(&view, 1), false).ok());
  EXPECT_EQ(made, 2);
  EXPECT_EQ(client.connects(), 2);
  // A refused connection (a bad token) is reported as such, not as the
  // service being away.
  ResilientBlockClient refused(
      []() -> absl::StatusOr<std::unique_ptr<BlockClient>> { return absl::UnauthenticatedError("unknown token"); },
      absl::Seconds(1), &clock);
  EXPECT_EQ(refused.Put(std::span(&view, 1), false).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(refused.Put(std::span(&view, 1), false).code(), absl::StatusCode::kUnauthenticated);
  // Other errors keep the connection.
  svc.Refuse(absl::InvalidArgumentError("bad block"));
  EXPECT_EQ(client.Put(std::span(&view, 1), false).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.connects(), 2);
}

TEST(BlockWriterTest, StoresEverythingSubmitted) {
  FakeService svc;
  BlockWriter w(&svc, SmallWriter(4));
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(w.Submit(Blob(i)).ok());
  ASSERT_TRUE(w.Flush(absl::Seconds(10)).ok());
  EXPECT_EQ(svc.size(), 20u);
  const BlockWriterStats s = w.stats();
  EXPECT_EQ(s.stored, 20u);
  EXPECT_EQ(s.dropped + s.rejected, 0u);
  EXPECT_FALSE(s.degraded);
  EXPECT_EQ(s.queued_bytes, 0u);
}

TEST(BlockWriterTest, AFullQueueMakesSubmitWaitWhileTheServiceAnswers) {
  FakeService svc;
  svc.Hold(true);
  BlockWriter w(&svc, SmallWriter(3));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(w.Submit(Blob(i)).ok());
  std::atomic<bool> returned{false};
  std::thread producer([&] {
    EXPECT_TRUE(w.Submit(Blob(3)).ok());
    returned = true;
  });
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(returned.load()) << "Submit must wait while the queue is full";
  EXPECT_LE(w.stats().queued_bytes, SmallWriter(3).max_queued_bytes);
  svc.Hold(false);
  producer.join();
  EXPECT_TRUE(returned.load());
  ASSERT_TRUE(w.Flush(absl::Seconds(10)).ok());
  EXPECT_EQ(svc.size(), 4u);
  EXPECT_GE(w.stats().submit_waits, 1u);
}

TEST(BlockWriterTest, AnUnreachableServiceDegradesDropsTheOldestAndCatchesUp) {
  FakeService svc;
  svc.SetReachable(false);
  BlockWriter w(&svc, SmallWriter(4));
  // Never waits, however many blocks come.
  for (int i = 0; i < 12; ++i) ASSERT_TRUE(w.Submit(Blob(i)).ok());
  for (int tries = 0; tries < 1000 && !w.degraded(); ++tries) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_TRUE(w.degraded());
  BlockWriterStats s = w.stats();
  EXPECT_LE(s.queued_bytes, SmallWriter(4).max_queued_bytes);
  EXPECT_GE(s.dropped, 8u);
  EXPECT_EQ(s.degraded_episodes, 1u);
  EXPECT_EQ(s.last_error.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(w.Flush(absl::Milliseconds(20)).code(), absl::StatusCode::kDeadlineExceeded);
  // The service returns: the backlog (the newest blocks) drains.
  svc.SetReachable(true);
  ASSERT_TRUE(w.Flush(absl::Seconds(10)).ok());
  s = w.stats();
  EXPECT_FALSE(s.degraded);
  EXPECT_EQ(s.stored + s.dropped, 12u);
  EXPECT_EQ(svc.size(), s.stored);
  EXPECT_TRUE(svc.Has(Key(0, 12)));  // the last block submitted survived
}

double Metric(const std::vector<prometheus::MetricFamily>& families, const std::string& name,
              const std::string& label = "") {
  for (const prometheus::MetricFamily& f : families) {
    if (f.name != name) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      if (!label.empty() && (m.label.empty() || m.label[0].value != label)) continue;
      return f.type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value;
    }
  }
  ADD_FAILURE() << "no metric " << name << " " << label;
  return -1;
}

TEST(KvMetricsTest, ReportDegradedModeAndTheWriterCounts) {
  FakeService svc;
  BlockWriter w(&svc, SmallWriter(4));
  KvMetrics metrics(&w);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(w.Submit(Blob(i)).ok());
  ASSERT_TRUE(w.Flush(absl::Seconds(10)).ok());
  metrics.CountPrefixLookup(128);
  metrics.CountPrefixLookup(0);
  metrics.CountRefreshes(4096, 2);
  metrics.CountFetchedBack(17, 3);
  auto m = metrics.Collect();
  EXPECT_EQ(Metric(m, "kvc_worker_write_through_blocks_total", "stored"), 3);
  EXPECT_EQ(Metric(m, "kvc_worker_cache_service_degraded"), 0);
  EXPECT_EQ(Metric(m, "kvc_worker_prefix_lookups_total", "hit"), 1);
  EXPECT_EQ(Metric(m, "kvc_worker_prefix_lookups_total", "miss"), 1);
  EXPECT_EQ(Metric(m, "kvc_worker_prefix_tokens_loaded_total"), 128);
  EXPECT_EQ(Metric(m, "kvc_worker_rehydrated_tokens_total"), 4096);
  EXPECT_EQ(Metric(m, "kvc_worker_fetched_back_blocks_total"), 17);
  EXPECT_EQ(Metric(m, "kvc_worker_short_selections_total"), 3);
  svc.SetReachable(false);
  ASSERT_TRUE(w.Submit(Blob(9)).ok());
  for (int tries = 0; tries < 1000 && !w.degraded(); ++tries) absl::SleepFor(absl::Milliseconds(2));
  m = metrics.Collect();
  EXPECT_EQ(Metric(m, "kvc_worker_cache_service_degraded"), 1);
  EXPECT_EQ(Metric(m, "kvc_worker_cache_service_degraded_episodes_total"), 1);
  svc.SetReachable(true);
  ASSERT_TRUE(w.Flush(absl::Seconds(10)).ok());
}

TEST(BlockWriterTest, RefusedBlocksAreDroppedNotRetried) {
  FakeService svc;
  svc.Refuse(absl::InvalidArgumentError("bad block"));
  BlockWriter w(&svc, SmallWriter(8));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(w.Submit(Blob(i)).ok());
  ASSERT_TRUE(w.Flush(absl::Seconds(10)).ok());
  const BlockWriterStats s = w.stats();
  EXPECT_EQ(s.rejected, 4u);
  EXPECT_FALSE(s.degraded);
  EXPECT_LE(svc.puts(), 4);
  EXPECT_EQ(w.Submit(std::string(SmallWriter(8).max_queued_bytes + 1, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
}

// RESOURCE_EXHAUSTED (the service's queue or receive pool full, a quota) is
// tried again busy_retries times before the blocks count as rejected.
TEST(BlockWriterTest, ABusyServiceIsTriedAgainThenRejected) {
  FakeService svc;
  BlockWriterOptions o = SmallWriter(8);
  o.retry_initial = absl::Milliseconds(10);
  o.retry_max = absl::Milliseconds(100);
  o.busy_retries = 3;
  svc.Refuse(absl::ResourceExhaustedError("server busy: the UCX receive pool is full"));
  {
    BlockWriter w(&svc, o);
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(w.Submit(Blob(i)).ok());
    absl::SleepFor(absl::Milliseconds(15));
    svc.Refuse(absl::OkStatus());  // room again
    ASSERT_TRUE(w.Flush(absl::Seconds(10)).ok());
    EXPECT_EQ(w.stats().stored, 4u);
    EXPECT_EQ(w.stats().rejected, 0u);
    EXPECT_FALSE(w.stats().degraded);
  }
  svc.Refuse(absl::ResourceExhaustedError("tenant quota"));
  const int before = svc.puts();
  BlockWriter w(&svc, o);
  ASSERT_TRUE(w.Submit(Blob(9)).ok());
  ASSERT_TRUE(w.Flush(absl::Seconds(10)).ok());
  EXPECT_EQ(w.stats().rejected, 1u);
  EXPECT_EQ(svc.puts() - before, 1 + o.busy_retries);
  EXPECT_FALSE(w.stats().degraded);
}

// A random model and full attention, in chunks of 16.
model::ModelConfig SmallModel() { return testing::TinyModel(); }
using ModelFixture = testing::TinyModelRuntime;

std::vector<int32_t> Tokens(int n, uint64_t seed) { return testing::RandomTokens(n, SmallModel().vocab_size, seed); }

KvSyncOptions SyncOptions() {
  KvSyncOptions o;
  o.tenant = "t";
  o.model = "random";
  o.block_tokens = 8;
  return o;
}

// Prefill `prompt` through `cache` (announcing the tokens), then `decode`
// greedy steps; returns the logits of the last prompt token and every step.
std::vector<float> RunSequence(model::Transformer& m, WriteThroughCache& cache, std::vector<int32_t> tokens,
                               int decode, int64_t first = 0) {
  const int32_t vocab = SmallModel().vocab_size;
  std::vector<float> logits(vocab), all;
  cache.AppendTokens(std::span<const int32_t>(tokens).subspan(first));
  EXPECT_TRUE(m.Forward(absl::MakeConstSpan(tokens).subspan(first), first, cache, logits.data()).ok());
  all = logits;
  for (int s = 0; s < decode; ++s) {
    const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    tokens.push_back(next);
    cache.AppendTokens(std::span<const int32_t>(&tokens.back(), 1));
    EXPECT_TRUE(m.Forward(absl::MakeConstSpan(&tokens.back(), 1), tokens.size() - 1, cache, logits.data()).ok());
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

std::unique_ptr<WriteThroughCache> Synced(BlockWriter& writer, const std::string& spec = "full",
                                          BlockClient* reader = nullptr) {
  auto made =
      WriteThroughCache::Create(SmallModel(), *cache::MakePolicy(SmallModel(), spec), &writer, SyncOptions(), reader);
  EXPECT_TRUE(made.ok()) << made.status();
  return std::move(*made);
}

TEST(WriteThroughCacheTest, EveryCompletedBlockOfEveryLayerReachesTheService) {
  ModelFixture f;
  FakeService svc;
  BlockWriter writer(&svc, BlockWriterOptions());
  auto cache = Synced(writer, "cascading:budget=12");
  const std::vector<int32_t> prompt = Tokens(37, 1);
  RunSequence(*f.model, *cache, prompt, 12);  // 49 tokens: 6 whole blocks
  ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
  EXPECT_EQ(cache->blocks_written(), 6 * SmallModel().n_layers);
  EXPECT_EQ(svc.size(), 12u);
  ASSERT_EQ(cache->hashes().size(), 6u);
  for (int32_t l = 0; l < SmallModel().n_layers; ++l) {
    for (const Hash128& h : cache->hashes()) EXPECT_TRUE(svc.Has(KvBlockKey(SyncOptions(), l, h)));
  }
  // A token not announced before it runs is an error, not a wrong key.
  std::vector<float> logits(SmallModel().vocab_size);
  const int32_t t = 3;
  absl::Status s;
  for (int i = 0; i < 8 && s.ok(); ++i) s = f.model->Forward(absl::MakeConstSpan(&t, 1), 49 + i, *cache, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

// Sequence A (a_tokens random tokens, full attention) stores its KV in
// `svc`; B shares A's first `shared` tokens, then `tail` of its own.
struct SharedPrefix {
  std::unique_ptr<WriteThroughCache> a;
  std::vector<int32_t> b;
};
SharedPrefix StoreAndShare(ModelFixture& f, BlockWriter& writer, int a_tokens, int shared, int tail, uint64_t seed) {
  SharedPrefix p;
  const std::vector<int32_t> a = Tokens(a_tokens, seed);
  p.a = Synced(writer);
  RunSequence(*f.model, *p.a, a, 0);
  EXPECT_TRUE(writer.Flush(absl::Seconds(10)).ok());
  p.b.assign(a.begin(), a.begin() + shared);
  const std::vector<int32_t> own = Tokens(tail, seed + 1);
  p.b.insert(p.b.end(), own.begin(), own.end());
  return p;
}

TEST(WriteThroughCacheTest, APrefixLoadedFromTheServiceEqualsRecomputingIt) {
  ModelFixture f;
  FakeService svc;
  BlockWriter writer(&svc, BlockWriterOptions());
  // B shares A's first 30 tokens: 3 whole blocks of 8 are cached; aligned
  // to the prefill chunk (16), 16 tokens load.
  const std::vector<int32_t> b = StoreAndShare(f, writer, 45, 30, 9, 2).b;
  auto reuse = Synced(writer);
  absl::StatusOr<PrefixLoad> load = LoadCachedPrefix(svc, SyncOptions(), SmallModel(), b, reuse->inner(), /*align=*/16);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->tokens, 16);
  EXPECT_EQ(load->blocks, 2);
  ASSERT_TRUE(reuse->SkipStoredPrefix(load->tokens).ok());
  reuse->AppendTokens(std::span<const int32_t>(b).first(load->tokens));
  const std::vector<float> reused = RunSequence(*f.model, *reuse, b, 6, load->tokens);

  // From scratch in one pass: bit for bit. Unaligned (every cached block),
  // the rest runs in other chunks than from scratch: within fp32
  // reassociation.
  auto whole = Synced(writer);
  const std::vector<float> recomputed = RunSequence(*f.model, *whole, b, 6);
  ASSERT_EQ(recomputed.size(), reused.size());
  int differ = 0;
  float worst = 0;
  for (size_t i = 0; i < reused.size(); ++i) {
    differ += reused[i] != recomputed[i];
    worst = std::max(worst, std::abs(reused[i] - recomputed[i]));
  }
  EXPECT_EQ(differ, 0) << "worst " << worst;
  auto unaligned = Synced(writer);
  ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
  load = LoadCachedPrefix(svc, SyncOptions(), SmallModel(), b, unaligned->inner());
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->tokens, 32);  // B's own blocks are stored by now too
  ASSERT_TRUE(unaligned->SkipStoredPrefix(load->tokens).ok());
  unaligned->AppendTokens(std::span<const int32_t>(b).first(load->tokens));
  const std::vector<float> near = RunSequence(*f.model, *unaligned, b, 6, load->tokens);
  for (size_t i = 0; i < near.size(); ++i) ASSERT_NEAR(near[i], recomputed[i], 1e-4f) << i;
  ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
}

// A sparse policy's KV of layers past the first is not full attention's for
// the same tokens: blocks are shared only between sequences whose KV was
// computed the same way (kv_origin), never across.
TEST(WriteThroughCacheTest, BlocksAreSharedOnlyBetweenSequencesOfTheSameKvOrigin) {
  ModelFixture f;
  FakeService svc;
  BlockWriter writer(&svc, BlockWriterOptions());
  const std::vector<int32_t> prompt = Tokens(33, 21);
  auto sparse = Synced(writer, "cascading:budget=12");
  RunSequence(*f.model, *sparse, prompt, 0);
  ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
  EXPECT_EQ(*CachedPrefixTokens(svc, SyncOptions(), SmallModel(), sparse->kv_origin(), prompt, 1), 32);
  EXPECT_EQ(*CachedPrefixTokens(svc, SyncOptions(), SmallModel(), "dense", prompt, 1), 0);
  EXPECT_EQ(*CachedPrefixTokens(svc, SyncOptions(), SmallModel(), "cascading:budget=16", prompt, 1), 0);
  // Full attention finds nothing to load, writes its own, then finds those.
  auto dense = Synced(writer);
  EXPECT_EQ(dense->kv_origin(), "dense");
  absl::StatusOr<PrefixLoad> load = LoadCachedPrefix(svc, SyncOptions(), SmallModel(), prompt, dense->inner());
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->tokens, 0);
  RunSequence(*f.model, *dense, prompt, 0);
  ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
  auto again = Synced(writer);
  load = LoadCachedPrefix(svc, SyncOptions(), SmallModel(), prompt, again->inner());
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->tokens, 32);
  // Dense blocks chain from the all-zero parent, as every client computes.
  EXPECT_EQ(dense->hashes(), PrefixHashes(prompt, SyncOptions().block_tokens));
  EXPECT_NE(sparse->hashes(), dense->hashes());
}

// Streamed: each layer's blocks load when the rest of the prompt reaches it.
TEST(WriteThroughCacheTest, AStreamedPrefixEqualsRecomputingAndABadBlockFailsItsLayer) {
  ModelFixture f;
  FakeService svc;
  BlockWriter writer(&svc, BlockWriterOptions());
  SharedPrefix shared = StoreAndShare(f, writer, 45, 36, 7, 12);
  const std::vector<int32_t>& b = shared.b;
  WriteThroughCache* first = shared.a.get();

  absl::StatusOr<int64_t> cached = CachedPrefixTokens(svc, SyncOptions(), SmallModel(), "dense", b, /*align=*/16);
  ASSERT_TRUE(cached.ok());
  EXPECT_EQ(*cached, 32);
  auto streamed = Synced(writer, "full", &svc);
  streamed->AppendTokens(std::span<const int32_t>(b).first(32));
  ASSERT_TRUE(streamed->StreamPrefix(32).ok());
  const std::vector<float> got = RunSequence(*f.model, *streamed, b, 5, 32);
  auto scratch = Synced(writer);
  EXPECT_EQ(got, RunSequence(*f.model, *scratch, b, 5));
  EXPECT_EQ(streamed->stats().tokens_seen, 43 + 5);

  // Layer 1's second block corrupt: layer 0 loads, layer 1's Attend fails.
  ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
  svc.Corrupt(KvBlockKey(SyncOptions(), 1, first->hashes()[1]));
  auto broken = Synced(writer, "full", &svc);
  broken->AppendTokens(std::span<const int32_t>(b).first(32));
  ASSERT_TRUE(broken->StreamPrefix(32).ok());
  broken->AppendTokens(std::span<const int32_t>(b).subspan(32));
  std::vector<float> logits(SmallModel().vocab_size);
  const absl::Status s = f.model->Forward(absl::MakeConstSpan(b).subspan(32), 32, *broken, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("layer 1"), std::string::npos) << s;
  // A policy that cannot load, or bad lengths, are refused up front.
  auto cascading = Synced(writer, "cascading:budget=12", &svc);
  cascading->AppendTokens(std::span<const int32_t>(b).first(32));
  EXPECT_EQ(cascading->StreamPrefix(32).code(), absl::StatusCode::kFailedPrecondition);
  auto short_of_tokens = Synced(writer, "full", &svc);
  EXPECT_EQ(short_of_tokens->StreamPrefix(32).code(), absl::StatusCode::kInvalidArgument);
}

TEST(WriteThroughCacheTest, PrefixLoadStopsAtAMissingOrCorruptBlockAndNeverFails) {
  ModelFixture f;
  FakeService svc;
  BlockWriter writer(&svc, BlockWriterOptions());
  const std::vector<int32_t> a = Tokens(41, 4);  // 5 blocks
  auto first = Synced(writer);
  RunSequence(*f.model, *first, a, 0);
  ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
  const std::vector<Hash128> h = first->hashes();

  // Layer 1's third block corrupt: two blocks load, for every layer.
  svc.Corrupt(KvBlockKey(SyncOptions(), 1, h[2]));
  auto p = cache::MakePolicy(SmallModel(), "full");
  absl::StatusOr<PrefixLoad> load = LoadCachedPrefix(svc, SyncOptions(), SmallModel(), a, **p);
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->tokens, 16);
  EXPECT_EQ((*p)->stats().tokens_seen, 16);

  // Unreachable: nothing loads, no error.
  svc.SetReachable(false);
  auto q = cache::MakePolicy(SmallModel(), "full");
  load = LoadCachedPrefix(svc, SyncOptions(), SmallModel(), a, **q);
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->tokens, 0);
  svc.SetReachable(true);

  // A policy that needs the prefix's queries loads nothing.
  auto c = cache::MakePolicy(SmallModel(), "cascading:budget=12");
  load = LoadCachedPrefix(svc, SyncOptions(), SmallModel(), a, **c);
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->tokens, 0);
  EXPECT_EQ((*c)->stats().tokens_seen, 0);
}

TEST(WriteThroughCacheTest, GenerationGoesOnWhileTheServiceIsAwayAndCatchesUp) {
  ModelFixture f;
  FakeService svc;
  BlockWriterOptions o;
  o.retry_initial = absl::Milliseconds(1);
  o.retry_max = absl::Milliseconds(5);
  BlockWriter writer(&svc, o);
  auto synced = Synced(writer);
  auto plain = cache::MakePolicy(SmallModel(), "full");
  svc.SetReachable(false);
  const std::vector<int32_t> prompt = Tokens(20, 6);
  const std::vector<float> got = RunSequence(*f.model, *synced, prompt, 20);
  // The logits do not depend on the service.
  auto reference = Synced(writer);
  EXPECT_EQ(got, RunSequence(*f.model, *reference, prompt, 20));
  for (int tries = 0; tries < 1000 && !writer.degraded(); ++tries) absl::SleepFor(absl::Milliseconds(2));
  EXPECT_TRUE(writer.degraded());
  svc.SetReachable(true);
  ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
  EXPECT_FALSE(writer.degraded());
  for (int32_t l = 0; l < SmallModel().n_layers; ++l) {
    for (const Hash128& h : synced->hashes()) EXPECT_TRUE(svc.Has(KvBlockKey(SyncOptions(), l, h)));
  }
}

// Runs `spec` with its context in the service and kept local side by side:
// a prompt, then `steps` greedy decode steps, letting the writer catch up
// before each so the part held locally shrinks. Same kernel calls on the
// same rows: the logits must be the same bit for bit. Returns the
// offloaded cache; *smallest_resident (if not null) gets the fewest
// resident tokens seen.
std::unique_ptr<WriteThroughCache> DecodeSideBySide(ModelFixture& f, FakeService& svc, BlockWriter& writer,
                                                    const std::string& spec, int prompt_tokens, int steps,
                                                    int64_t* smallest_resident = nullptr) {
  auto offloaded = Synced(writer, spec, &svc);
  EXPECT_TRUE(offloaded->offloaded()) << spec;
  auto local = Synced(writer, spec);
  EXPECT_FALSE(local->offloaded());
  const std::vector<int32_t> prompt = Tokens(prompt_tokens, 7);
  const int32_t vocab = SmallModel().vocab_size;
  std::vector<int32_t> tokens = prompt;
  std::vector<float> a(vocab), b(vocab);
  offloaded->AppendTokens(prompt);
  local->AppendTokens(prompt);
  EXPECT_TRUE(f.model->Forward(prompt, 0, *offloaded, a.data()).ok());
  EXPECT_TRUE(f.model->Forward(prompt, 0, *local, b.data()).ok());
  EXPECT_EQ(a, b);
  int64_t fewest = INT64_MAX;
  for (int step = 0; step < steps; ++step) {
    EXPECT_TRUE(writer.Flush(absl::Seconds(10)).ok());
    const int32_t next = static_cast<int32_t>(std::max_element(a.begin(), a.end()) - a.begin());
    tokens.push_back(next);
    offloaded->AppendTokens(std::span<const int32_t>(&tokens.back(), 1));
    local->AppendTokens(std::span<const int32_t>(&tokens.back(), 1));
    const int64_t pos = static_cast<int64_t>(tokens.size()) - 1;
    const absl::Status sa = f.model->Forward(absl::MakeConstSpan(&tokens.back(), 1), pos, *offloaded, a.data());
    const absl::Status sb = f.model->Forward(absl::MakeConstSpan(&tokens.back(), 1), pos, *local, b.data());
    EXPECT_TRUE(sa.ok() && sb.ok()) << sa << " " << sb;
    EXPECT_EQ(a, b) << spec << " step " << step;
    if (a != b) break;
    fewest = std::min(fewest, offloaded->stats().resident_tokens);
  }
  if (smallest_resident != nullptr) *smallest_resident = fewest;
  return offloaded;
}

// RefreshKV with its full context in the service: only the hot set and the
// tokens not yet acknowledged stay local, and every full step rehydrates
// the layer.
TEST(WriteThroughCacheTest, RefreshKvRehydratedFromTheServiceEqualsKeepingItLocal) {
  ModelFixture f;
  FakeService svc;
  BlockWriter writer(&svc, BlockWriterOptions());
  int64_t smallest_resident = 0;
  auto offloaded = DecodeSideBySide(f, svc, writer, "refreshkv:k=6,stride=3,mode=fixed", 40, 40, &smallest_resident);
  auto& refresh = dynamic_cast<cache::RefreshKv&>(offloaded->inner());
  EXPECT_GT(refresh.full_steps(), 0);
  EXPECT_GT(refresh.rehydrated_tokens(), 0);
  EXPECT_EQ(refresh.refreshes_skipped(), 0);
  // Layer 1's context was fetched while layer 0 attended.
  EXPECT_GT(offloaded->prefetch_hits(), 0);
  // Locally: K = 6 hot tokens plus the last partial block (< 8) at most.
  EXPECT_LE(smallest_resident, 6 + 8);
}

// TokenSelect with its values in the service: the keys stay (every
// selection scores them all), the values of the sinks, the selection and
// the local window stay, and a new selection fetches its tokens' blocks
// back. Dropped values read as NaN, so any step that read one would differ.
TEST(WriteThroughCacheTest, TokenSelectFetchesSelectedValuesBackAndEqualsKeepingThemLocal) {
  ModelFixture f;
  FakeService svc;
  BlockWriter writer(&svc, BlockWriterOptions());
  auto offloaded = DecodeSideBySide(f, svc, writer, "tokenselect:init=2,k=4,local=4,theta=1", 48, 40);
  auto& ts = dynamic_cast<cache::TokenSelectPolicy&>(offloaded->inner());
  const cache::ColdValueStats c = ts.cold_stats();
  EXPECT_GT(ts.selections(), 0);
  EXPECT_GT(c.dropped_blocks, 0);
  EXPECT_GT(c.fetched_blocks, 0);
  EXPECT_GT(c.fetches, 0);
  EXPECT_EQ(c.failed_fetches, 0);
  EXPECT_EQ(ts.short_selections(), 0);
}

// The combined policy with Cf's values in the service: a new selection
// fetches its tokens back (to unfold and attend them), a full step the
// whole layer, with the next layer's transfer started meanwhile.
TEST(WriteThroughCacheTest, CombinedFetchesEvictedTokensBackAndEqualsKeepingThemLocal) {
  ModelFixture f;
  FakeService svc;
  BlockWriter writer(&svc, BlockWriterOptions());
  auto offloaded =
      DecodeSideBySide(f, svc, writer, "combined:sinks=2,subcaches=2,window=4,k=4,theta=1,refresh=fixed,stride=4", 48, 40);
  auto& combined = dynamic_cast<cache::Combined&>(offloaded->inner());
  const cache::ColdValueStats c = combined.cold_stats();
  EXPECT_GT(combined.full_steps(), 0);
  EXPECT_GT(combined.selections(), 0);
  EXPECT_GT(c.dropped_blocks, 0);
  EXPECT_GT(c.fetched_blocks, 0);
  EXPECT_EQ(c.failed_fetches, 0);
  EXPECT_EQ(combined.refreshes_skipped(), 0);
  EXPECT_GT(offloaded->prefetch_hits(), 0);
}

// Without the service, a selection goes on with the tokens in memory, a
// combined full step runs sparse and a RefreshKV refresh runs on the hot
// set: generation never stops.
TEST(WriteThroughCacheTest, OffloadedPoliciesKeepGeneratingWhenTheServiceCannotReturnValues) {
  for (const std::string spec : {"refreshkv:k=6,stride=2,mode=fixed", "tokenselect:init=2,k=4,local=4,theta=1",
                                 "combined:sinks=2,subcaches=2,window=4,k=4,theta=1,refresh=fixed,stride=2"}) {
    SCOPED_TRACE(spec);
    ModelFixture f;
    FakeService svc;
    BlockWriter writer(&svc, BlockWriterOptions());
    auto offloaded = Synced(writer, spec, &svc);
    const std::vector<int32_t> prompt = Tokens(40, 8);
    RunSequence(*f.model, *offloaded, prompt, 2);
    ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
    svc.SetReachable(false);
    std::vector<float> logits(SmallModel().vocab_size);
    for (int step = 0; step < 10; ++step) {
      const int32_t token = step;  // positions 42.. (40 prompt tokens, 2 decoded)
      offloaded->AppendTokens(std::span<const int32_t>(&token, 1));
      const absl::Status s = f.model->Forward(absl::MakeConstSpan(&token, 1), 42 + step, *offloaded, logits.data());
      ASSERT_TRUE(s.ok()) << s;
      for (const float x : logits) ASSERT_TRUE(std::isfinite(x)) << "step " << step;
    }
    if (auto* r = dynamic_cast<cache::RefreshKv*>(&offloaded->inner())) {
      EXPECT_GT(r->refreshes_skipped(), 0);
      EXPECT_EQ(r->last_cold_error().code(), absl::StatusCode::kUnavailable);
    } else if (auto* ts = dynamic_cast<cache::TokenSelectPolicy*>(&offloaded->inner())) {
      EXPECT_GT(ts->short_selections(), 0);
      EXPECT_EQ(ts->last_cold_error().code(), absl::StatusCode::kUnavailable);
    } else {
      auto& c = dynamic_cast<cache::Combined&>(offloaded->inner());
      EXPECT_GT(c.refreshes_skipped() + c.short_selections(), 0);
      EXPECT_EQ(c.last_cold_error().code(), absl::StatusCode::kUnavailable);
    }
    svc.SetReachable(true);
    ASSERT_TRUE(writer.Flush(absl::Seconds(10)).ok());
  }
}

TEST(WriteThroughCacheTest, BadOptionsAreNamed) {
  FakeService svc;
  BlockWriter writer(&svc, BlockWriterOptions());
  KvSyncOptions o = SyncOptions();
  o.block_tokens = 0;
  auto made = WriteThroughCache::Create(SmallModel(), *cache::MakePolicy(SmallModel(), "full"), &writer, o);
  EXPECT_EQ(made.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(made.status().message().find("block_tokens"), std::string::npos);
  auto good = Synced(writer);
  EXPECT_EQ(good->SkipStoredPrefix(5).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvc
