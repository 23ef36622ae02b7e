// The worker and the cache service as separate processes (kvcached a child
// of this test, the test the worker), over gRPC and over UCX (tcp on
// loopback):
//   - RefreshKV with its context in the service, after the blocks spilled
//     from the host tier to RocksDB, equals full attention (and equals
//     keeping Cf in memory, bit for bit);
//   - TokenSelect and the combined policy with their values in the service
//     (fetched back, from RocksDB, when a selection or a full step needs
//     them) equal keeping them in memory, bit for bit;
//   - a second request sharing a prefix loads it and equals recomputing it,
//     bit for bit;
//   - the service killed and restarted during generation: the worker keeps
//     generating, reports degraded mode, and catches up.
#include <signal.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kernel_test_util.h"
#include "tests/kvcached_child.h"
#include "tests/model_test_util.h"
#include "tests/server_fixture.h"
#include "tests/temp_dir.h"
#include "worker/cache/combined.h"
#include "worker/cache/policy_factory.h"
#include "worker/cache/refresh_kv.h"
#include "worker/cache/token_select.h"
#include "worker/kv/block_client_factory.h"
#include "worker/kv/block_writer.h"
#include "worker/kv/kv_sync.h"
#include "worker/kv/resilient_block_client.h"
#include "worker/kv/service_link.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc {
namespace {

model::ModelConfig SmallModel() { return testing::TinyModel(/*seq_len=*/512); }

std::vector<int32_t> Tokens(int n, uint64_t seed) { return testing::RandomTokens(n, SmallModel().vocab_size, seed); }

KvSyncOptions Sync() {
  KvSyncOptions o;
  o.tenant = "a";  // the fixture's tenant a
  o.model = "random";
  o.block_tokens = 16;
  return o;
}

struct Transport {
  std::string name;  // grpc | ucx
};

class KvSyncServiceTest : public ::testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    ckpt_ = *model::Checkpoint::Random(SmallModel(), 11, 0.2f);
    model::TransformerOptions o;
    o.max_chunk = 32;
    model_ = *model::Transformer::Create(ckpt_.get(), o);
    testing::KvcachedChildOptions k;
    k.ucx = GetParam().name == "ucx";
    // 64 KiB of host tier: a few blocks; the rest spill to RocksDB.
    k.host_capacity = "64KiB";
    service_ = std::make_unique<testing::KvcachedChild>(dir_.path(), k);
    ASSERT_GT(service_->port(), 0) << "kvcached did not start";
  }

  // The worker's client: through ResilientBlockClient, as a worker runs it.
  std::unique_ptr<ResilientBlockClient> Client() {
    BlockClientOptions o;
    o.transport = GetParam().name;
    o.grpc.address = service_->address();
    o.grpc.token = testing::kTokenA;
    o.grpc.timeout = absl::Seconds(5);
    if (GetParam().name == "ucx") {
      o.ucx.address = service_->ucx_address();
      o.ucx.ucx.tls = "tcp";
      o.ucx.ucx.net_devices = "lo";
      o.ucx.timeout = absl::Seconds(5);
    }
    return std::make_unique<ResilientBlockClient>([o] { return MakeBlockClient(o); }, absl::Milliseconds(50));
  }

  std::unique_ptr<WriteThroughCache> Synced(BlockWriter& w, const std::string& spec, BlockClient* reader = nullptr) {
    auto made = WriteThroughCache::Create(SmallModel(), *cache::MakePolicy(SmallModel(), spec), &w, Sync(), reader);
    EXPECT_TRUE(made.ok()) << made.status();
    return std::move(*made);
  }

  // Runs `tokens[first..]` (announced) through `cache` and returns the last logits.
  std::vector<float> Run(WriteThroughCache& cache, const std::vector<int32_t>& tokens, int64_t first) {
    std::vector<float> logits(SmallModel().vocab_size);
    cache.AppendTokens(std::span<const int32_t>(tokens).subspan(first));
    const absl::Status s =
        model_->Forward(absl::MakeConstSpan(tokens).subspan(first), first, cache, logits.data());
    EXPECT_TRUE(s.ok()) << s;
    return logits;
  }

  // One greedy step after `logits`; returns the next logits.
  std::vector<float> Step(WriteThroughCache& cache, std::vector<int32_t>& tokens, const std::vector<float>& logits) {
    tokens.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    return Run(cache, tokens, static_cast<int64_t>(tokens.size()) - 1);
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::KvcachedChild> service_;
  std::unique_ptr<model::Checkpoint> ckpt_;
  std::unique_ptr<model::Transformer> model_;
};

TEST_P(KvSyncServiceTest, RefreshAfterSpillToRocksDbEqualsFullAttention) {
  auto client = Client();
  BlockWriterOptions wo;
  wo.write_through_disk = true;
  BlockWriter writer(client.get(), wo);
  // Every decode step a full step: RefreshKV is then full attention.
  auto refresh = Synced(writer, "refreshkv:k=8,stride=1,mode=fixed", client.get());
  ASSERT_TRUE(refresh->offloaded());
  auto local = Synced(writer, "refreshkv:k=8,stride=1,mode=fixed");
  auto full = Synced(writer, "full");
  std::vector<int32_t> tokens = Tokens(200, 1);
  std::vector<float> a = Run(*refresh, tokens, 0), b = Run(*local, tokens, 0), c = Run(*full, tokens, 0);
  std::vector<int32_t> ta = tokens, tb = tokens, tc = tokens;
  for (int step = 0; step < 24; ++step) {
    ASSERT_TRUE(writer.Flush(absl::Seconds(20)).ok());
    a = Step(*refresh, ta, a);
    b = Step(*local, tb, b);
    c = Step(*full, tc, c);
    ASSERT_EQ(a, b) << "step " << step << ": rehydrated Cf differs from Cf kept in memory";
    EXPECT_LT(kernels::testing::RelErrorByNorm(a, c), 2e-5) << "step " << step;
  }
  auto& policy = dynamic_cast<cache::RefreshKv&>(refresh->inner());
  EXPECT_GT(policy.rehydrated_tokens(), 20 * 200);
  EXPECT_EQ(policy.refreshes_skipped(), 0);
  EXPECT_LT(refresh->stats().resident_tokens, 8 + 2 * Sync().block_tokens);
  // The blocks were served from RocksDB: 3 sequences x 2 layers x 14 blocks
  // of 16 KiB do not fit the 64 KiB host tier.
  auto stats = testing::ClientFor(service_->port(), testing::kTokenA)->Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->disk().hits(), 0u);
  EXPECT_GT(stats->host().evictions(), 0u);
}

TEST_P(KvSyncServiceTest, SelectedTokensFetchedBackFromTheServiceEqualKeepingThemLocal) {
  auto client = Client();
  BlockWriterOptions wo;
  wo.write_through_disk = true;
  BlockWriter writer(client.get(), wo);
  for (const std::string spec : {"tokenselect:init=4,k=16,local=8,theta=1",
                                 "combined:sinks=4,subcaches=2,window=8,k=16,theta=1,refresh=fixed,stride=3"}) {
    SCOPED_TRACE(spec);
    auto offloaded = Synced(writer, spec, client.get());
    ASSERT_TRUE(offloaded->offloaded());
    auto local = Synced(writer, spec);
    std::vector<int32_t> ta = Tokens(200, 2);
    std::vector<int32_t> tb = ta;
    std::vector<float> a = Run(*offloaded, ta, 0), b = Run(*local, tb, 0);
    for (int step = 0; step < 24; ++step) {
      ASSERT_TRUE(writer.Flush(absl::Seconds(20)).ok());
      a = Step(*offloaded, ta, a);
      b = Step(*local, tb, b);
      ASSERT_EQ(a, b) << "step " << step << ": values fetched back differ from values kept in memory";
    }
    cache::ColdValueStats cold;
    if (auto* ts = dynamic_cast<cache::TokenSelectPolicy*>(&offloaded->inner())) {
      cold = ts->cold_stats();
      EXPECT_EQ(ts->short_selections(), 0);
    } else {
      auto& c = dynamic_cast<cache::Combined&>(offloaded->inner());
      cold = c.cold_stats();
      EXPECT_GT(c.full_steps(), 0);
      EXPECT_EQ(c.refreshes_skipped(), 0);
      EXPECT_EQ(c.short_selections(), 0);
    }
    EXPECT_GT(cold.fetched_blocks, 0);
    EXPECT_GT(cold.dropped_blocks, 0);
    EXPECT_EQ(cold.failed_fetches, 0);
  }
}

TEST_P(KvSyncServiceTest, PrefixReuseEqualsRecomputing) {
  auto client = Client();
  BlockWriter writer(client.get(), BlockWriterOptions());
  std::vector<int32_t> a = Tokens(150, 2);
  auto first = Synced(writer, "full");
  Run(*first, a, 0);
  ASSERT_TRUE(writer.Flush(absl::Seconds(20)).ok());

  // B shares 130 tokens with A; aligned to the prefill chunk (32): 128 load.
  std::vector<int32_t> b(a.begin(), a.begin() + 130);
  const std::vector<int32_t> tail = Tokens(40, 3);
  b.insert(b.end(), tail.begin(), tail.end());
  auto reused = Synced(writer, "full");
  absl::StatusOr<PrefixLoad> load =
      LoadCachedPrefix(*client, Sync(), SmallModel(), b, reused->inner(), model_->options().max_chunk);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->tokens, 128);
  ASSERT_TRUE(reused->SkipStoredPrefix(load->tokens).ok());
  reused->AppendTokens(std::span<const int32_t>(b).first(load->tokens));
  std::vector<float> x = Run(*reused, b, load->tokens);
  auto scratch = Synced(writer, "full");
  std::vector<float> y = Run(*scratch, b, 0);
  ASSERT_EQ(x, y);
  std::vector<int32_t> bx = b, by = b;
  for (int step = 0; step < 8; ++step) {
    x = Step(*reused, bx, x);
    y = Step(*scratch, by, y);
    ASSERT_EQ(x, y) << "step " << step;
  }
  ASSERT_TRUE(writer.Flush(absl::Seconds(20)).ok());
}

// As a worker runs it: ServiceLink looks the prefix up and streams it in.
TEST_P(KvSyncServiceTest, APrefixStreamedThroughTheServiceLinkEqualsRecomputing) {
  ServiceLinkOptions o;
  o.client.transport = GetParam().name;
  o.client.grpc.address = service_->address();
  o.client.grpc.token = testing::kTokenA;
  o.client.ucx.address = GetParam().name == "ucx" ? service_->ucx_address() : "";
  o.client.ucx.ucx.tls = "tcp";
  o.client.ucx.ucx.net_devices = "lo";
  o.sync = Sync();
  o.metrics_address = "127.0.0.1:0";
  absl::StatusOr<std::unique_ptr<ServiceLink>> link = ServiceLink::Start(o);
  ASSERT_TRUE(link.ok()) << link.status();
  const std::vector<int32_t> a = Tokens(220, 5);
  auto first = *(*link)->Attach(SmallModel(), *cache::MakePolicy(SmallModel(), "full"));
  EXPECT_EQ((*(*link)->LoadPrefix(SmallModel(), a, *first, 32)).tokens, 0);  // nothing cached yet
  Run(*first, a, 0);
  ASSERT_TRUE((*link)->writer().Flush(absl::Seconds(20)).ok());

  std::vector<int32_t> b(a.begin(), a.begin() + 200);
  const std::vector<int32_t> tail = Tokens(30, 6);
  b.insert(b.end(), tail.begin(), tail.end());
  auto seq = *(*link)->Attach(SmallModel(), *cache::MakePolicy(SmallModel(), "full"));
  absl::StatusOr<PrefixLoad> load = (*link)->LoadPrefix(SmallModel(), b, *seq, model_->options().max_chunk);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->tokens, 192);
  std::vector<float> x = Run(*seq, b, load->tokens);
  auto scratch = Synced((*link)->writer(), "full");
  EXPECT_EQ(x, Run(*scratch, b, 0));
  EXPECT_GT((*link)->metrics_port(), 0);
  const auto families = (*link)->metrics().Collect();
  bool found = false;
  for (const auto& f : families) {
    if (f.name != "kvc_worker_prefix_tokens_loaded_total") continue;
    found = true;
    EXPECT_EQ(f.metric[0].counter.value, 192);
  }
  EXPECT_TRUE(found);
}

TEST_P(KvSyncServiceTest, GenerationSurvivesARestartOfTheService) {
  auto client = Client();
  BlockWriterOptions wo;
  wo.write_through_disk = true;  // acknowledged = durable: a SIGKILL loses nothing acknowledged
  wo.retry_initial = absl::Milliseconds(5);
  wo.retry_max = absl::Milliseconds(50);
  BlockWriter writer(client.get(), wo);
  auto seq = Synced(writer, "refreshkv:k=8,stride=4,mode=fixed", client.get());
  std::vector<int32_t> tokens = Tokens(100, 4);
  std::vector<float> logits = Run(*seq, tokens, 0);
  ASSERT_TRUE(writer.Flush(absl::Seconds(20)).ok());  // the prompt is in the service: the next steps drop it
  for (int step = 0; step < 8; ++step) logits = Step(*seq, tokens, logits);
  ASSERT_TRUE(writer.Flush(absl::Seconds(20)).ok());
  auto& policy = dynamic_cast<cache::RefreshKv&>(seq->inner());
  const int64_t rehydrated_before = policy.rehydrated_tokens();
  EXPECT_GT(rehydrated_before, 0);

  service_->Kill(SIGKILL);
  // Generation goes on with the local hot set; refreshes are skipped and
  // the write-through degrades.
  for (int step = 0; step < 24; ++step) logits = Step(*seq, tokens, logits);
  EXPECT_GT(policy.refreshes_skipped(), 0);
  for (int i = 0; i < 500 && !writer.degraded(); ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(writer.degraded());

  ASSERT_TRUE(service_->Restart()) << "kvcached did not restart";
  // The backlog drains and refreshes rehydrate again.
  ASSERT_TRUE(writer.Flush(absl::Seconds(30)).ok()) << "write-through did not catch up";
  EXPECT_FALSE(writer.degraded());
  const int64_t skipped = policy.refreshes_skipped();
  for (int step = 0; step < 8; ++step) logits = Step(*seq, tokens, logits);
  EXPECT_EQ(policy.refreshes_skipped(), skipped);
  EXPECT_GT(policy.rehydrated_tokens(), rehydrated_before);
  EXPECT_GE(client->connects(), 2);
  // Everything the sequence wrote is in the service.
  ASSERT_TRUE(writer.Flush(absl::Seconds(20)).ok());
  const std::vector<Hash128>& hashes = seq->hashes();
  std::vector<uint32_t> layers = {0, 1};
  auto cached = client->Lookup("a", "random", layers, hashes);
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ(*cached, hashes.size());
}

INSTANTIATE_TEST_SUITE_P(Transports, KvSyncServiceTest, ::testing::Values(Transport{"grpc"}, Transport{"ucx"}),
                         [](const ::testing::TestParamInfo<Transport>& i) { return i.param.name; });

}  // namespace
}  // namespace kvc
