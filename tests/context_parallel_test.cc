// Context-parallel TokenSelect (worker/peer/): a sequence's context split by
// token range over shard servers, each answering the two-phase selection
// over UCX (tcp on loopback). The owner's outputs must equal single-worker
// TokenSelect over the whole context, bit for bit, and a lost shard fails
// only the sequences it held.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "absl/time/clock.h"
#include "tests/model_test_util.h"
#include "tests/temp_dir.h"
#include "worker/cache/token_select.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"
#include "worker/peer/context_parallel.h"
#include "worker/peer/context_shard.h"
#include "worker/peer/ucx_rpc.h"

namespace kvc::peer {
namespace {

model::ModelConfig SmallModel() { return testing::TinyModel(); }
using ModelFixture = testing::TinyModelRuntime;

ucx::UcxOptions Loopback() {
  ucx::UcxOptions u;
  u.tls = "tcp";
  u.net_devices = "lo";
  return u;
}

struct Shards {
  std::vector<std::unique_ptr<ContextShardServer>> servers;
  std::vector<std::shared_ptr<RpcClient>> clients;
  explicit Shards(int n) {
    std::vector<std::string> addresses;
    for (int i = 0; i < n; ++i) {
      ContextShardOptions o;
      o.rpc.ucx = Loopback();
      auto s = ContextShardServer::Start(o);
      EXPECT_TRUE(s.ok()) << s.status();
      addresses.push_back(absl::StrCat("127.0.0.1:", (*s)->port()));
      servers.push_back(std::move(*s));
    }
    auto c = ConnectPeers(addresses, Loopback(), absl::Seconds(10));
    EXPECT_TRUE(c.ok()) << c.status();
    clients = std::move(*c);
  }
};

ContextParallelOptions Options(float theta) {
  ContextParallelOptions o;
  o.select.n_init = 2;
  o.select.k = 8;
  o.select.n_local = 8;
  o.select.theta = theta;
  o.local_tokens = 40;
  o.range_tokens = 24;
  o.select.lse_block = 8;
  return o;
}

// Prompt then greedy decode through both policies; logits must match bit for bit.
void ExpectSameAsOneWorker(ModelFixture& f, cache::CachePolicy& split, cache::CachePolicy& whole, int prompt,
                           int steps, uint64_t seed) {
  const int32_t vocab = SmallModel().vocab_size;
  std::vector<int32_t> tokens = testing::RandomTokens(prompt, vocab, seed);
  std::vector<float> a(vocab), b(vocab);
  ASSERT_TRUE(f.model->Forward(tokens, 0, split, a.data()).ok());
  ASSERT_TRUE(f.model->Forward(tokens, 0, whole, b.data()).ok());
  ASSERT_EQ(a, b) << "prompt";
  for (int s = 0; s < steps; ++s) {
    tokens.push_back(static_cast<int32_t>(std::max_element(a.begin(), a.end()) - a.begin()));
    const int64_t pos = static_cast<int64_t>(tokens.size()) - 1;
    const absl::Status sa = f.model->Forward(absl::MakeConstSpan(&tokens.back(), 1), pos, split, a.data());
    ASSERT_TRUE(sa.ok()) << sa;
    ASSERT_TRUE(f.model->Forward(absl::MakeConstSpan(&tokens.back(), 1), pos, whole, b.data()).ok());
    ASSERT_EQ(a, b) << "decode step " << s;
  }
}

TEST(ContextParallelTest, SplitOverShardsEqualsOneWorkerTokenSelect) {
  for (const float theta : {1.0f, 0.5f}) {
    SCOPED_TRACE(theta);
    ModelFixture f;
    Shards shards(2);
    const ContextParallelOptions o = Options(theta);
    auto split = ContextParallelTokenSelect::Create(SmallModel(), o, shards.clients);
    ASSERT_TRUE(split.ok()) << split.status();
    auto whole = cache::TokenSelectPolicy::Create(SmallModel(), o.select);
    ASSERT_TRUE(whole.ok());
    // 150 prompt tokens and 40 steps: ranges of 24 move to the peers in turn.
    ExpectSameAsOneWorker(f, **split, **whole, 150, 40, 3);
    EXPECT_GT((*split)->remote_kv_bytes(), 0u);
    EXPECT_GT(shards.servers[0]->bytes_held(), 0u);
    EXPECT_GT(shards.servers[1]->bytes_held(), 0u);
    EXPECT_GT((*split)->selections(), 0);
    // Per step: lse and candidate sets, far less than the shards' KV (none
    // when every layer reused its selection).
    if (theta >= 1.0f) {
      EXPECT_GT((*split)->last_step_bytes(), 0u);
    } else {
      EXPECT_GT((*split)->cache_hits(), 0);
    }
    EXPECT_LT((*split)->last_step_bytes() * 4, (*split)->remote_kv_bytes());
    EXPECT_LT((*split)->stats().resident_tokens, 40 + 2 + 1);
  }
}

TEST(ContextParallelTest, ClosingTheSequenceFreesItsShards) {
  ModelFixture f;
  Shards shards(2);
  {
    auto split = *ContextParallelTokenSelect::Create(SmallModel(), Options(1.0f), shards.clients);
    auto whole = *cache::TokenSelectPolicy::Create(SmallModel(), Options(1.0f).select);
    ExpectSameAsOneWorker(f, *split, *whole, 120, 2, 4);
    EXPECT_EQ(shards.servers[0]->sequences(), 1);
  }
  EXPECT_EQ(shards.servers[0]->sequences(), 0);
  EXPECT_EQ(shards.servers[0]->bytes_held(), 0u);
  EXPECT_EQ(shards.servers[1]->sequences(), 0);
}

TEST(ContextParallelTest, ALostShardFailsOnlyTheSequencesItHeld) {
  ModelFixture f;
  Shards held(1), spare(1);
  auto doomed = *ContextParallelTokenSelect::Create(SmallModel(), Options(1.0f), held.clients);
  auto fine = *ContextParallelTokenSelect::Create(SmallModel(), Options(1.0f), spare.clients);
  const int32_t vocab = SmallModel().vocab_size;
  const std::vector<int32_t> tokens = testing::RandomTokens(100, vocab, 5);
  std::vector<float> logits(vocab);
  ASSERT_TRUE(f.model->Forward(tokens, 0, *doomed, logits.data()).ok());
  ASSERT_TRUE(f.model->Forward(tokens, 0, *fine, logits.data()).ok());
  held.servers[0].reset();  // the peer goes away
  const int32_t next = 7;
  const absl::Status s = f.model->Forward(absl::MakeConstSpan(&next, 1), 100, *doomed, logits.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("is lost"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("tokens [0, 24) [24, 48) [48, 72) on peer"), absl::string_view::npos) << s;
  // Once lost, always: the context is gone.
  EXPECT_EQ(f.model->Forward(absl::MakeConstSpan(&next, 1), 100, *doomed, logits.data()).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(f.model->Forward(absl::MakeConstSpan(&next, 1), 100, *fine, logits.data()).ok());
}

TEST(ContextParallelTest, BadOptionsAndMessagesAreNamed) {
  ContextParallelOptions o = Options(1.0f);
  o.select.pool_kernel = 3;
  EXPECT_NE(o.Validate().message().find("pooling"), absl::string_view::npos);
  o = Options(1.0f);
  o.local_tokens = 10;
  EXPECT_NE(o.Validate().message().find("local_tokens"), absl::string_view::npos);
  Shards shards(1);
  // A truncated message and an unknown sequence are errors of that call only.
  auto r = shards.clients[0]->Roundtrip(kAppend, std::string(5, 'x'));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  Writer w;
  w.Put<uint64_t>(42).Put<int32_t>(0).Put<int64_t>(0).Put<int64_t>(10).Put<int64_t>(8);
  r = shards.clients[0]->Roundtrip(kLse, w.Take());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  r = shards.clients[0]->Roundtrip(99, "");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_TRUE(shards.clients[0]->Roundtrip(kClose, std::string(8, '\0')).status().code() ==
              absl::StatusCode::kNotFound);
}

// kvc-shard as a child process (tcp on loopback), killed at will.
class ShardProcess {
 public:
  explicit ShardProcess(const std::string& dir) {
    const std::string port_file = dir + "/port";
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      const std::string log = dir + "/log";
      FILE* f = std::freopen(log.c_str(), "a", stderr);
      (void)f;
      execl(KVC_SHARD_PATH, KVC_SHARD_PATH, "--listen=127.0.0.1:0", ("--port_file=" + port_file).c_str(),
            "--ucx_tls=tcp", "--ucx_net_devices=lo", static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 1000 && port_ == 0; ++i) {
      std::ifstream in(port_file);
      if (!(in >> port_)) port_ = 0;
      if (port_ == 0) absl::SleepFor(absl::Milliseconds(10));
    }
  }
  ~ShardProcess() { Kill(); }
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

// Separate processes: the owner (this test) and two kvc-shard children. One
// sequence spread over both, one over the second only. SIGKILL of the first
// mid-generation: the first sequence fails with the lost range named, the
// second goes on and still equals one-worker TokenSelect.
TEST(ContextParallelProcessTest, AShardProcessKilledMidGenerationFailsOnlyItsSequences) {
  testing::TempDir dir_a, dir_b;
  ShardProcess a(dir_a.path()), b(dir_b.path());
  ASSERT_GT(a.port(), 0);
  ASSERT_GT(b.port(), 0);
  auto both = ConnectPeers({a.address(), b.address()}, Loopback(), absl::Seconds(5));
  ASSERT_TRUE(both.ok()) << both.status();
  auto second = ConnectPeers({b.address()}, Loopback(), absl::Seconds(5));
  ASSERT_TRUE(second.ok()) << second.status();
  ModelFixture f;
  const ContextParallelOptions o = Options(1.0f);
  auto spread = *ContextParallelTokenSelect::Create(SmallModel(), o, *both);
  auto survivor = *ContextParallelTokenSelect::Create(SmallModel(), o, *second);
  auto reference = *cache::TokenSelectPolicy::Create(SmallModel(), o.select);
  const int32_t vocab = SmallModel().vocab_size;
  std::vector<int32_t> tokens = testing::RandomTokens(130, vocab, 9);
  std::vector<float> x(vocab), y(vocab), z(vocab);
  ASSERT_TRUE(f.model->Forward(tokens, 0, *spread, x.data()).ok());
  ASSERT_TRUE(f.model->Forward(tokens, 0, *survivor, y.data()).ok());
  ASSERT_TRUE(f.model->Forward(tokens, 0, *reference, z.data()).ok());
  ASSERT_EQ(y, z);
  a.Kill();
  for (int step = 0; step < 10; ++step) {
    tokens.push_back(static_cast<int32_t>(std::max_element(z.begin(), z.end()) - z.begin()));
    const int64_t pos = static_cast<int64_t>(tokens.size()) - 1;
    const absl::Status lost = f.model->Forward(absl::MakeConstSpan(&tokens.back(), 1), pos, *spread, x.data());
    EXPECT_EQ(lost.code(), absl::StatusCode::kUnavailable) << lost;
    if (step == 0) {
      EXPECT_NE(lost.message().find(absl::StrCat("on peer ", a.address(), " is lost")), absl::string_view::npos)
          << lost;
    }
    ASSERT_TRUE(f.model->Forward(absl::MakeConstSpan(&tokens.back(), 1), pos, *survivor, y.data()).ok());
    ASSERT_TRUE(f.model->Forward(absl::MakeConstSpan(&tokens.back(), 1), pos, *reference, z.data()).ok());
    ASSERT_EQ(y, z) << "step " << step;
  }
}

}  // namespace
}  // namespace kvc::peer
