// The BlockClient interface over every transport against a real cache
// service: gRPC, UCX over shared memory, UCX over TCP on loopback. Plus the
// failure cases only UCX has: a client killed mid-Put or mid-Get (the server
// drops its endpoints, settles its requests and keeps serving others), a
// server killed mid-Get (the client returns an error within its timeout),
// and full registered pools on either side (refused or deferred, never
// unbounded memory, never a deadlock).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "cachesvc/server/auth.h"
#include "cachesvc/server/metrics.h"
#include "cachesvc/server/service.h"
#include "cachesvc/server/ucx_service.h"
#include "common/executor.h"
#include "tests/kvcached_child.h"
#include "tests/server_fixture.h"
#include "tests/temp_dir.h"
#include "tests/test_blocks.h"
#include "worker/kv/block_client_factory.h"
#include "worker/kv/grpc_block_client.h"
#include "worker/kv/ucx_block_client.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;
using ::testing::AnyOf;
using ::testing::HasSubstr;

// --- child-process roles ------------------------------------------------------
// The test binary re-executes itself with KVC_UCX_CHILD=put or =get to play
// a client that is SIGKILLed mid-transfer (a fork of a process with UCX
// threads must not use UCX: exec gives the child a clean one).

[[noreturn]] void RunChild(const std::string& role) {
  UcxBlockClientOptions o;
  o.address = std::getenv("KVC_UCX_CHILD_ADDR");
  o.token = testing::kTokenA;
  o.ucx.tls = std::getenv("KVC_UCX_CHILD_TLS");
  o.ucx.net_devices = std::getenv("KVC_UCX_CHILD_DEV");
  o.grpc.address = std::getenv("KVC_UCX_CHILD_GRPC");
  o.timeout = absl::Seconds(20);
  auto c = UcxBlockClient::Create(o);
  if (!c.ok()) {
    fprintf(stderr, "child: %s\n", c.status().ToString().c_str());
    _exit(3);
  }
  std::vector<std::string> wire;
  std::vector<absl::string_view> views;
  for (int i = 0; i < 8; ++i) wire.push_back(testing::MakeBlockProto(testing::SpecOfSize(2 << 20, 9000 + i, "a")).SerializeAsString());
  for (const auto& w : wire) views.push_back(w);
  std::vector<BlockKey> keys;
  for (int i = 0; i < 8; ++i) keys.push_back(testing::MakeKey(testing::SpecOfSize(2 << 20, 9000 + i, "a")));
  if (role == "get" && !(*c)->Put(views, false).ok()) _exit(4);
  bool marked = false;
  while (true) {
    absl::Status s = role == "get" ? (*c)->Get(keys, [](GotBlock&) {}) : (*c)->Put(views, false);
    if (!s.ok()) _exit(4);
    if (!marked) {
      std::ofstream(std::getenv("KVC_UCX_CHILD_MARK")) << "1";
      marked = true;
    }
  }
}

const int kChildHook = [] {
  if (const char* role = std::getenv("KVC_UCX_CHILD"); role != nullptr) RunChild(role);
  return 0;
}();

// The value of the unlabelled gauge or counter `name` in `text` (Prometheus
// text format); -1 when absent.
double MetricValue(const std::string& text, absl::string_view name) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (!absl::ConsumePrefix(&line, name) || !absl::ConsumePrefix(&line, " ")) continue;
    double v = 0;
    if (absl::SimpleAtod(line, &v)) return v;
  }
  return -1;
}

// --- the parameterised suite ----------------------------------------------------

struct TransportParam {
  const char* name;
  const char* transport;  // "grpc" or "ucx"
  const char* tls;
  const char* net_devices;
};

void PrintTo(const TransportParam& p, std::ostream* os) { *os << p.name; }

std::vector<absl::string_view> Views(const std::vector<std::string>& wire) {
  return std::vector<absl::string_view>(wire.begin(), wire.end());
}

class TransportTest : public ::testing::TestWithParam<TransportParam> {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    ServerOptions o = testing::TestServerOptions(dir_->path());
    o.host_capacity_bytes = 32ull << 20;
    o.ucx_listen_address = "127.0.0.1:0";
    auto s = CacheServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = s->release();
    ASSERT_GT(server_->ucx_port(), 0);
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }

  static BlockClientOptions Options(const TransportParam& p, const std::string& token) {
    BlockClientOptions o;
    o.transport = p.transport;
    o.grpc.address = absl::StrCat("127.0.0.1:", server_->port());
    o.grpc.token = token;
    o.grpc.timeout = absl::Seconds(20);
    o.ucx.address = absl::StrCat("127.0.0.1:", server_->ucx_port());
    o.ucx.ucx.tls = p.tls;
    o.ucx.ucx.net_devices = p.net_devices;
    o.ucx.timeout = absl::Seconds(20);
    return o;
  }

  std::unique_ptr<BlockClient> Client(const std::string& token = testing::kTokenA) {
    auto c = MakeBlockClient(Options(GetParam(), token));
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    EXPECT_EQ((*c)->transport(), GetParam().transport);
    return *std::move(c);
  }

  // Blocks of tenant "a" with seeds [first, first + n).
  static std::vector<v1::Block> Blocks(uint64_t first, int n, uint64_t kv_bytes) {
    std::vector<v1::Block> out;
    for (int i = 0; i < n; ++i) out.push_back(testing::MakeBlockProto(testing::SpecOfSize(kv_bytes, first + i, "a")));
    return out;
  }
  static std::vector<std::string> Wire(const std::vector<v1::Block>& blocks) {
    std::vector<std::string> out;
    for (const auto& b : blocks) out.push_back(b.SerializeAsString());
    return out;
  }
  static std::vector<BlockKey> Keys(const std::vector<v1::Block>& blocks) {
    std::vector<BlockKey> out;
    for (const auto& b : blocks) out.push_back(BlockKey::FromProto(b.key()));
    return out;
  }
  // Puts `blocks`, gets them back in one call, and counts the intact ones.
  static int RoundTrip(BlockClient& c, const std::vector<v1::Block>& blocks) {
    const std::vector<std::string> wire = Wire(blocks);
    const std::vector<absl::string_view> views = Views(wire);
    absl::Status s = c.Put(views, false);
    EXPECT_TRUE(s.ok()) << s;
    int intact = 0;
    const std::vector<BlockKey> keys = Keys(blocks);
    uint32_t expect_index = 0;
    s = c.Get(keys, [&](GotBlock& g) {
      EXPECT_EQ(g.index, expect_index++);
      EXPECT_TRUE(g.status.ok()) << g.status;
      if (!g.status.ok()) return;
      const v1::Block& want = blocks[g.index];
      EXPECT_NE(g.tier, BlockTier::kNone);
      if (g.block.k == want.k() && g.block.v == want.v() && g.block.key == keys[g.index] &&
          g.block.checksum == want.checksum()) {
        ++intact;
      }
    });
    EXPECT_TRUE(s.ok()) << s;
    return intact;
  }

  static testing::TempDir* dir_;
  static CacheServer* server_;
};

testing::TempDir* TransportTest::dir_ = nullptr;
CacheServer* TransportTest::server_ = nullptr;

TEST_P(TransportTest, PutThenGetRoundTrip) {
  auto c = Client();
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(RoundTrip(*c, Blocks(100, 4, 16 << 10)), 4);
}

TEST_P(TransportTest, MissIsPerBlockNotFoundNotACallError) {
  auto c = Client();
  ASSERT_NE(c, nullptr);
  const auto blocks = Blocks(200, 1, 8 << 10);
  const auto wire = Wire(blocks);
  ASSERT_TRUE(c->Put(Views(wire), false).ok());
  std::vector<BlockKey> keys = {Keys(blocks)[0], testing::MakeKey(testing::SpecOfSize(8 << 10, 999999, "a"))};
  std::vector<absl::StatusCode> codes;
  absl::Status s = c->Get(keys, [&](GotBlock& g) { codes.push_back(g.status.code()); });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_THAT(codes, ::testing::ElementsAre(absl::StatusCode::kOk, absl::StatusCode::kNotFound));
}

TEST_P(TransportTest, LargeBlocksOf2MiB) {
  auto c = Client();
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(RoundTrip(*c, Blocks(300, 3, 2 << 20)), 3);
}

TEST_P(TransportTest, BatchesLargerThanTheHostTierComeBackFromDisk) {
  auto c = Client();
  ASSERT_NE(c, nullptr);
  // 48 x 1 MiB against a 32 MiB host tier: part of the Get reads RocksDB (executor path).
  const auto blocks = Blocks(400, 48, 1 << 20);
  const auto wire = Wire(blocks);
  for (size_t i = 0; i < blocks.size(); i += 16) {
    std::vector<absl::string_view> batch(wire.begin() + i, wire.begin() + i + 16);
    ASSERT_TRUE(c->Put(batch, false).ok());
  }
  int intact = 0, from_disk = 0;
  const auto keys = Keys(blocks);
  absl::Status s = c->Get(keys, [&](GotBlock& g) {
    ASSERT_TRUE(g.status.ok()) << g.status;
    from_disk += g.tier == BlockTier::kDisk;
    intact += g.block.k == blocks[g.index].k() && g.block.v == blocks[g.index].v();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(intact, 48);
  EXPECT_GT(from_disk, 0);
}

TEST_P(TransportTest, ConcurrentClientsAndConcurrentCallsOnOneClient) {
  auto shared = Client();
  ASSERT_NE(shared, nullptr);
  std::vector<std::thread> threads;
  std::atomic<int> intact{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::unique_ptr<BlockClient> own = t % 2 == 0 ? Client() : nullptr;
      BlockClient& c = own ? *own : *shared;
      for (int round = 0; round < 3; ++round) {
        intact += RoundTrip(c, Blocks(1000 + 100 * t + 10 * round, 4, 256 << 10));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(intact.load(), 4 * 3 * 4);
}

TEST_P(TransportTest, UnknownTokenIsUnauthenticated) {
  auto c = MakeBlockClient(Options(GetParam(), "not-a-known-token-0123456789"));
  if (!c.ok()) {  // UCX refuses at HELLO
    EXPECT_EQ(c.status().code(), absl::StatusCode::kUnauthenticated) << c.status();
    return;
  }
  const auto wire = Wire(Blocks(500, 1, 4 << 10));
  EXPECT_EQ((*c)->Put(Views(wire), false).code(), absl::StatusCode::kUnauthenticated);
}

TEST_P(TransportTest, AnotherTenantsBlocksArePermissionDenied) {
  auto c = Client(testing::kTokenA);
  ASSERT_NE(c, nullptr);
  const auto b = testing::MakeBlockProto(testing::SpecOfSize(4 << 10, 600, "b"));
  const std::vector<std::string> wire = {b.SerializeAsString()};
  absl::Status put = c->Put(Views(wire), false);
  EXPECT_EQ(put.code(), absl::StatusCode::kPermissionDenied) << put;
  EXPECT_THAT(std::string(put.message()), HasSubstr("tenant 'b'"));
  const std::vector<BlockKey> keys = {BlockKey::FromProto(b.key())};
  absl::Status get = c->Get(keys, [](GotBlock&) {});
  EXPECT_EQ(get.code(), absl::StatusCode::kPermissionDenied) << get;
}

TEST_P(TransportTest, BadInputGetsAClearErrorAndTheClientStaysUsable) {
  auto c = Client();
  ASSERT_NE(c, nullptr);
  const std::vector<std::string> garbage = {"this is not a serialized block"};
  absl::Status s = c->Put(Views(garbage), false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;

  v1::Block bad = testing::MakeBlockProto(testing::SpecOfSize(4 << 10, 700, "a"));
  bad.set_checksum(bad.checksum() ^ 1);
  const std::vector<std::string> bad_sum = {bad.SerializeAsString()};
  s = c->Put(Views(bad_sum), false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("blocks[0]"));

  s = c->Put({}, false);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("empty"));

  s = c->Get({}, [](GotBlock&) {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;

  std::vector<BlockKey> too_many(257, testing::MakeKey(testing::SpecOfSize(4 << 10, 701, "a")));
  s = c->Get(too_many, [](GotBlock&) {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("max_batch_blocks"));

  EXPECT_EQ(RoundTrip(*c, Blocks(710, 2, 4 << 10)), 2) << "the client is still usable";
}

TEST_P(TransportTest, LookupAndHealthGoOverGrpc) {
  auto c = Client();
  ASSERT_NE(c, nullptr);
  const auto blocks = Blocks(800, 1, 4 << 10);
  const auto wire = Wire(blocks);
  ASSERT_TRUE(c->Put(Views(wire), false).ok());
  const BlockKey k = Keys(blocks)[0];
  const uint32_t layers[] = {k.layer};
  const Hash128 hashes[] = {k.hash};
  auto n = c->Lookup("a", k.model, layers, hashes);
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 1u);
  auto h = c->Healthy();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(*h);
}

TEST_P(TransportTest, UcxRequestsAreCountedInMetrics) {
  if (std::string(GetParam().transport) != "ucx") GTEST_SKIP() << "UCX metrics only";
  auto c = Client();
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(RoundTrip(*c, Blocks(900, 1, 4 << 10)), 1);
  // The server counts a Get once its last send completes, which may be
  // just after the client has the block: wait for it (bounded).
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text = server_->metrics()->RenderText();
    if (text.find("kvcache_ucx_requests_total{code=\"OK\",op=\"get\"}") != std::string::npos) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_THAT(text, HasSubstr("kvcache_ucx_requests_total{code=\"OK\",op=\"put\"}"));
  EXPECT_THAT(text, HasSubstr("kvcache_ucx_requests_total{code=\"OK\",op=\"get\"}"));
  EXPECT_THAT(text, HasSubstr("kvcache_ucx_bytes_total{direction=\"in\"}"));
}

INSTANTIATE_TEST_SUITE_P(Transports, TransportTest,
                         ::testing::Values(TransportParam{"grpc", "grpc", "", ""},
                                           TransportParam{"ucx_sm", "ucx", "sm,tcp", "lo"},
                                           TransportParam{"ucx_tcp", "ucx", "tcp", "lo"}),
                         [](const auto& info) { return std::string(info.param.name); });

// --- factory ------------------------------------------------------------------

TEST(BlockClientFactoryTest, AutoFallsBackToGrpcWhenUcxIsUnreachable) {
  testing::TempDir dir;
  ServerOptions o = testing::TestServerOptions(dir.path());  // UCX off
  auto server = CacheServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  EXPECT_EQ((*server)->ucx_port(), 0);
  BlockClientOptions bo;
  bo.grpc.address = absl::StrCat("127.0.0.1:", (*server)->port());
  bo.grpc.token = testing::kTokenA;
  bo.ucx.address = "127.0.0.1:1";  // nothing listens there
  bo.ucx.ucx.tls = "tcp";
  bo.ucx.ucx.net_devices = "lo";
  bo.ucx.timeout = absl::Seconds(5);
  const absl::Time start = absl::Now();
  auto c = MakeBlockClient(bo);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->transport(), "grpc");
  bo.transport = "ucx";
  auto u = MakeBlockClient(bo);
  EXPECT_FALSE(u.ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(12));
  bo.transport = "carrier-pigeon";
  EXPECT_EQ(MakeBlockClient(bo).status().code(), absl::StatusCode::kInvalidArgument);
}

// --- the client's registered pools ------------------------------------------------

// A server of its own per test (a 32 MiB host tier that only this test
// fills, so which blocks come from memory and which from disk is known).
class UcxClientPoolTest : public ::testing::TestWithParam<TransportParam> {
 protected:
  void SetUp() override {
    ServerOptions o = testing::TestServerOptions(dir_.path());
    o.host_capacity_bytes = 32ull << 20;
    o.ucx_listen_address = "127.0.0.1:0";
    o.flush_host_on_shutdown = false;
    auto s = CacheServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
  }
  UcxBlockClientOptions ClientOptions() const {
    UcxBlockClientOptions o;
    o.address = absl::StrCat("127.0.0.1:", server_->ucx_port());
    o.token = testing::kTokenA;
    o.ucx.tls = GetParam().tls;
    o.ucx.net_devices = GetParam().net_devices;
    o.grpc.address = absl::StrCat("127.0.0.1:", server_->port());
    o.timeout = absl::Seconds(20);
    return o;
  }
  static std::vector<v1::Block> Blocks(uint64_t first, int n, uint64_t kv_bytes) {
    std::vector<v1::Block> out;
    for (int i = 0; i < n; ++i) out.push_back(testing::MakeBlockProto(testing::SpecOfSize(kv_bytes, first + i, "a")));
    return out;
  }
  static std::vector<std::string> Wire(const std::vector<v1::Block>& blocks) {
    std::vector<std::string> out;
    for (const auto& b : blocks) out.push_back(b.SerializeAsString());
    return out;
  }
  static std::vector<BlockKey> Keys(const std::vector<v1::Block>& blocks) {
    std::vector<BlockKey> out;
    for (const auto& b : blocks) out.push_back(BlockKey::FromProto(b.key()));
    return out;
  }

  testing::TempDir dir_;
  std::unique_ptr<CacheServer> server_;
};

TEST_P(UcxClientPoolTest, GetThroughAReceivePoolSmallerThanTheBatchDefersBlocksInsteadOfCopyingThem) {
  UcxBlockClientOptions o = ClientOptions();
  o.recv_pool_bytes = 1 << 20;  // holds one 600 KiB block at a time
  o.send_pool_bytes = 1 << 20;
  auto c = UcxBlockClient::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  const auto blocks = Blocks(1500, 6, 600 << 10);
  const auto wire = Wire(blocks);
  for (const auto& w : wire) {
    const std::vector<absl::string_view> one = {w};
    ASSERT_TRUE((*c)->Put(one, false).ok());
  }
  EXPECT_EQ((*c)->pool_fallbacks(), 0u);
  int intact = 0;
  uint32_t expect_index = 0;
  const auto keys = Keys(blocks);
  absl::Status s = (*c)->Get(keys, [&](GotBlock& g) {
    EXPECT_EQ(g.index, expect_index++);
    intact += g.status.ok() && g.block.k == blocks[g.index].k() && g.block.v == blocks[g.index].v();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(intact, 6);
  // Blocks came in key order, each into the pool once the caller let go of
  // the previous one: no memory outside the pool.
  EXPECT_EQ((*c)->pool_fallbacks(), 0u);
  // A Put larger than the whole send pool still works, on memory of its own.
  const std::vector<absl::string_view> two = {wire[0], wire[1]};
  EXPECT_TRUE((*c)->Put(two, false).ok());
  EXPECT_EQ((*c)->pool_fallbacks(), 1u);
}

TEST_P(UcxClientPoolTest, ABlockArrivingAfterLaterOnesFillTheReceivePoolIsNotADeadlock) {
  UcxBlockClientOptions o = ClientOptions();
  o.recv_pool_bytes = 1 << 20;
  auto c = UcxBlockClient::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  // Block 0 goes to disk (48 MiB more pushed through the 32 MiB host tier);
  // blocks 1-4 stay in memory, so they reach the client first and fill its
  // pool while the caller waits for block 0.
  const auto cold = Blocks(1600, 1, 600 << 10);
  ASSERT_TRUE((*c)->Put(Views(Wire(cold)), false).ok());
  auto c2 = UcxBlockClient::Create(ClientOptions());
  ASSERT_TRUE(c2.ok()) << c2.status();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*c2)->Put(Views(Wire(Blocks(1700 + 16 * i, 16, 1 << 20))), false).ok());
  const auto hot = Blocks(1610, 4, 600 << 10);
  for (const auto& w : Wire(hot)) {
    const std::vector<absl::string_view> one = {w};
    ASSERT_TRUE((*c)->Put(one, false).ok());
  }
  std::vector<v1::Block> all = cold;
  all.insert(all.end(), hot.begin(), hot.end());
  const auto keys = Keys(all);
  int intact = 0;
  BlockTier first_tier = BlockTier::kNone;
  absl::Status s = (*c)->Get(keys, [&](GotBlock& g) {
    if (g.index == 0) first_tier = g.tier;
    intact += g.status.ok() && g.block.k == all[g.index].k() && g.block.v == all[g.index].v();
  });
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(intact, 5);
  EXPECT_EQ(first_tier, BlockTier::kDisk) << "the scenario needs block 0 to come from disk";
  // At most the awaited block went outside the pool at a time; here block 0,
  // perhaps one more.
  EXPECT_LE((*c)->pool_fallbacks(), 2u);
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxClientPoolTest,
                         ::testing::Values(TransportParam{"ucx_sm", "ucx", "sm,tcp", "lo"},
                                           TransportParam{"ucx_tcp", "ucx", "tcp", "lo"}),
                         [](const auto& info) { return std::string(info.param.name); });

// --- peers that die -------------------------------------------------------------

class KilledPeerTest : public ::testing::TestWithParam<TransportParam> {};

// Kills a client child playing `role` mid-transfer, then checks that the
// server dropped every endpoint of it (the shared-memory data endpoint has
// no failure detection of its own: it goes with its listener connection),
// settled its requests (shutdown does not wait for them) and serves others.
void KillClientMidTransfer(const TransportParam& param, const std::string& role) {
  testing::TempDir dir;
  ServerOptions o = testing::TestServerOptions(dir.path());
  o.host_capacity_bytes = 64ull << 20;
  o.ucx_listen_address = "127.0.0.1:0";
  o.flush_host_on_shutdown = false;  // so shutdown time is the drain alone
  auto server = CacheServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string addr = absl::StrCat("127.0.0.1:", (*server)->ucx_port());
  const std::string mark = dir.path() + "/child_mark";

  pid_t pid = fork();
  if (pid == 0) {
    setenv("KVC_UCX_CHILD", role.c_str(), 1);
    setenv("KVC_UCX_CHILD_ADDR", addr.c_str(), 1);
    setenv("KVC_UCX_CHILD_GRPC", absl::StrCat("127.0.0.1:", (*server)->port()).c_str(), 1);
    setenv("KVC_UCX_CHILD_TLS", param.tls, 1);
    setenv("KVC_UCX_CHILD_DEV", param.net_devices, 1);
    setenv("KVC_UCX_CHILD_MARK", mark.c_str(), 1);
    execl("/proc/self/exe", "ucx_transport_test_child", static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until the child has finished one transfer and is streaming the next.
  for (int i = 0; i < 500 && !std::filesystem::exists(mark); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(std::filesystem::exists(mark)) << "the child never completed a " << role;
  const double endpoints_alive = MetricValue((*server)->metrics()->RenderText(), "kvcache_ucx_endpoints");
  EXPECT_EQ(endpoints_alive, std::string(param.name) == "ucx_sm" ? 2 : 1)
      << "listener connection (+ worker-address endpoint for sm)";
  std::this_thread::sleep_for(std::chrono::milliseconds(15));
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited on its own with " << status;

  // No stale endpoint: the server notices the death (the listener
  // connection's peer-failure handling) and drops both.
  double endpoints = -1;
  for (int i = 0; i < 500; ++i) {
    endpoints = MetricValue((*server)->metrics()->RenderText(), "kvcache_ucx_endpoints");
    if (endpoints == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(endpoints, 0) << "the dead client's endpoints are still held";

  // Another client is served normally, on the same transport.
  UcxBlockClientOptions co;
  co.address = addr;
  co.token = testing::kTokenA;
  co.ucx.tls = param.tls;
  co.ucx.net_devices = param.net_devices;
  co.grpc.address = absl::StrCat("127.0.0.1:", (*server)->port());
  co.timeout = absl::Seconds(10);
  auto c = UcxBlockClient::Create(co);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<v1::Block> blocks;
  for (int i = 0; i < 4; ++i) blocks.push_back(testing::MakeBlockProto(testing::SpecOfSize(2 << 20, 5000 + i, "a")));
  std::vector<std::string> wire;
  for (const auto& b : blocks) wire.push_back(b.SerializeAsString());
  ASSERT_TRUE((*c)->Put(Views(wire), false).ok());
  std::vector<BlockKey> keys;
  for (const auto& b : blocks) keys.push_back(BlockKey::FromProto(b.key()));
  int intact = 0;
  ASSERT_TRUE((*c)->Get(keys, [&](GotBlock& g) {
                   intact += g.status.ok() && g.block.k == blocks[g.index].k() && g.block.v == blocks[g.index].v();
                 }).ok());
  EXPECT_EQ(intact, 4);
  c->reset();
  // The server shuts down at once: no call of the dead peer is still counted
  // in flight (that would hold the drain for shutdown_grace, 2 s).
  const absl::Time t0 = absl::Now();
  (*server)->Shutdown();
  EXPECT_LT(absl::Now() - t0, absl::Milliseconds(1500));
}

TEST_P(KilledPeerTest, ClientKilledMidPutLeavesTheServerServingOthers) { KillClientMidTransfer(GetParam(), "put"); }

TEST_P(KilledPeerTest, ClientKilledMidGetLeavesNoStaleEndpointOrCall) { KillClientMidTransfer(GetParam(), "get"); }

TEST_P(KilledPeerTest, ServerKilledMidGetFailsTheCallWithinTheTimeout) {
  testing::TempDir dir;
  testing::KvcachedChildOptions ko;
  ko.ucx = true;
  ko.host_capacity = "256MiB";
  testing::KvcachedChild child(dir.path(), ko);
  ASSERT_GT(child.ucx_port(), 0) << "kvcached did not start with UCX";
  UcxBlockClientOptions co;
  co.address = absl::StrCat("127.0.0.1:", child.ucx_port());
  co.token = testing::kTokenA;
  co.ucx.tls = GetParam().tls;
  co.ucx.net_devices = GetParam().net_devices;
  co.grpc.address = absl::StrCat("127.0.0.1:", child.port());
  co.timeout = absl::Seconds(5);
  auto c = UcxBlockClient::Create(co);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<std::string> wire;
  std::vector<BlockKey> keys;
  for (int i = 0; i < 32; ++i) {
    v1::Block b = testing::MakeBlockProto(testing::SpecOfSize(2 << 20, 7000 + i, "a"));
    keys.push_back(BlockKey::FromProto(b.key()));
    wire.push_back(b.SerializeAsString());
  }
  for (int i = 0; i < 32; i += 8) {
    std::vector<absl::string_view> batch(wire.begin() + i, wire.begin() + i + 8);
    ASSERT_TRUE((*c)->Put(batch, false).ok());
  }
  // Gets of 64 MiB back to back; the server dies under one of them.
  std::atomic<bool> started{false};
  absl::Status last;
  absl::Duration failing_call;
  std::thread reader([&] {
    for (int i = 0; i < 1000; ++i) {
      const absl::Time t0 = absl::Now();
      started = true;
      last = (*c)->Get(keys, [](GotBlock&) {});
      failing_call = absl::Now() - t0;
      if (!last.ok()) return;
    }
  });
  while (!started) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  const absl::Time killed = absl::Now();
  child.Kill(SIGKILL);
  reader.join();
  EXPECT_FALSE(last.ok());
  EXPECT_THAT(last.code(), AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded)) << last;
  EXPECT_LT(absl::Now() - killed, absl::Seconds(7)) << "the client did not give up within its timeout";
  EXPECT_LT(failing_call, absl::Seconds(7));
  // Later calls fail at once, naming the lost connection.
  const absl::Time t1 = absl::Now();
  absl::Status again = (*c)->Get(keys, [](GotBlock&) {});
  EXPECT_FALSE(again.ok());
  EXPECT_LT(absl::Now() - t1, absl::Seconds(6));
}

INSTANTIATE_TEST_SUITE_P(Transports, KilledPeerTest,
                         ::testing::Values(TransportParam{"ucx_sm", "ucx", "sm,tcp", "lo"},
                                           TransportParam{"ucx_tcp", "ucx", "tcp", "lo"}),
                         [](const auto& info) { return std::string(info.param.name); });

// --- a silent host ---------------------------------------------------------------

// A TCP port on loopback that never answers: a listening socket whose accept
// queue (backlog 0) is already full, so the kernel drops every further SYN,
// as a host that is gone or partitioned does.
class SilentPort {
 public:
  SilentPort() {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (bind(listener_, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(listener_, 0) != 0 ||
        getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ADD_FAILURE() << "cannot listen on loopback";
      return;
    }
    port_ = ntohs(a.sin_port);
    filler_ = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(filler_, reinterpret_cast<sockaddr*>(&a), len) != 0) ADD_FAILURE() << "cannot fill the accept queue";
  }
  ~SilentPort() {
    close(filler_);
    close(listener_);
  }
  int port() const { return port_; }

 private:
  int listener_ = -1;
  int filler_ = -1;
  int port_ = 0;
};

// UCX 1.13 aborts the process when a client gives up on an endpoint still in
// wireup; a host that answers nothing must instead cost the client its
// timeout and a clear UNAVAILABLE, and the process goes on.
TEST(SilentHostTest, UcxClientToAHostThatAnswersNothingFailsWithinItsTimeout) {
  SilentPort grpc_port;
  SilentPort ucx_port;
  for (const char* tls : {"tcp", "sm,tcp"}) {
    SCOPED_TRACE(tls);
    UcxBlockClientOptions co;
    co.address = absl::StrCat("127.0.0.1:", ucx_port.port());
    co.token = testing::kTokenA;
    co.ucx.tls = tls;
    co.ucx.net_devices = "lo";
    co.grpc.address = absl::StrCat("127.0.0.1:", grpc_port.port());
    co.timeout = absl::Seconds(1);
    const absl::Time start = absl::Now();
    auto c = UcxBlockClient::Create(co);
    EXPECT_FALSE(c.ok());
    EXPECT_THAT(c.status().code(), AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded))
        << c.status();
    EXPECT_THAT(c.status().message(), HasSubstr(co.grpc.address)) << c.status();
    EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  }
  // gRPC answers, the UCX port does not (a firewall, a wedged listener): the
  // endpoint never leaves wireup and is force-closed, not left for
  // ucp_worker_destroy to abort on.
  {
    testing::TempDir dir;
    testing::KvcachedChild child(dir.path(), testing::KvcachedChildOptions{});
    UcxBlockClientOptions co;
    co.address = absl::StrCat("127.0.0.1:", ucx_port.port());
    co.token = testing::kTokenA;
    co.ucx.tls = "tcp";
    co.ucx.net_devices = "lo";
    co.grpc.address = absl::StrCat("127.0.0.1:", child.port());
    co.timeout = absl::Seconds(1);
    const absl::Time start = absl::Now();
    auto c = UcxBlockClient::Create(co);
    EXPECT_FALSE(c.ok());
    EXPECT_THAT(c.status().message(), HasSubstr(co.address)) << c.status();
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  }
  // Through the factory (transport auto): no fallback to a gRPC client of a
  // host that does not answer gRPC either.
  BlockClientOptions bo;
  bo.grpc.address = absl::StrCat("127.0.0.1:", grpc_port.port());
  bo.grpc.token = testing::kTokenA;
  bo.grpc.timeout = absl::Seconds(1);
  bo.ucx.address = absl::StrCat("127.0.0.1:", ucx_port.port());
  bo.ucx.ucx.tls = "tcp";
  bo.ucx.ucx.net_devices = "lo";
  bo.ucx.timeout = absl::Seconds(1);
  const absl::Time start = absl::Now();
  auto m = MakeBlockClient(bo);
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kUnavailable) << m.status();
  EXPECT_THAT(m.status().message(), HasSubstr(bo.grpc.address)) << m.status();
}

// --- the server's receive pool --------------------------------------------------

// A UcxService of its own over a CacheServer's store, with a 4 MiB receive
// pool and a one-thread executor the test can hold, so a Put's pool region
// stays taken while the next Put arrives.
TEST(UcxReceivePoolTest, AFullPoolRefusesThePutWithResourceExhaustedAndTheNextOneFits) {
  testing::TempDir dir;
  auto server = CacheServer::Start(testing::TestServerOptions(dir.path()));
  ASSERT_TRUE(server.ok()) << server.status();
  TenantDirectory tenants(TenantRegistry::Disabled(), "", "");
  Limits limits;
  limits.max_message_bytes = 4 << 20;
  BoundedExecutor executor("ucx-pool-test", 1, 16);
  ServiceMetrics metrics((*server)->store());
  CacheService service((*server)->store(), &tenants, limits, &executor, &metrics, Clock::Real());
  UcxServiceOptions uo;
  uo.listen_address = "127.0.0.1:0";
  uo.ucx.tls = "tcp";
  uo.ucx.net_devices = "lo";
  uo.recv_pool_bytes = 4 << 20;
  auto ucx = UcxService::Start(uo, &service);
  ASSERT_TRUE(ucx.ok()) << ucx.status();

  UcxBlockClientOptions co;
  co.address = absl::StrCat("127.0.0.1:", (*ucx)->port());
  co.ucx.tls = "tcp";
  co.ucx.net_devices = "lo";
  co.grpc.address = absl::StrCat("127.0.0.1:", (*server)->port());
  co.timeout = absl::Seconds(20);
  auto c = UcxBlockClient::Create(co);
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<std::string> first = {
      testing::MakeBlockProto(testing::SpecOfSize(3 << 20, 8000, "a")).SerializeAsString()};
  const std::vector<std::string> second = {
      testing::MakeBlockProto(testing::SpecOfSize(3 << 20, 8001, "a")).SerializeAsString()};

  absl::Notification hold, holding;
  ASSERT_TRUE(executor.TrySubmit([&] {
    holding.Notify();
    hold.WaitForNotification();
  }));
  holding.WaitForNotification();
  absl::Status first_put;
  std::thread t([&] { first_put = (*c)->Put(Views(first), false); });
  // The first payload has landed in the pool (its parse waits behind `hold`).
  for (int i = 0; i < 1000 && MetricValue(metrics.RenderText(), "kvcache_ucx_bytes_total{direction=\"in\"}") <
                                  static_cast<double>(first[0].size());
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  absl::Status refused = (*c)->Put(Views(second), false);
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_THAT(std::string(refused.message()), HasSubstr("receive pool"));
  hold.Notify();
  t.join();
  EXPECT_TRUE(first_put.ok()) << first_put;
  EXPECT_TRUE((*c)->Put(Views(second), false).ok()) << "the region came back";
  c->reset();
  (*ucx)->Stop(absl::Seconds(1));
  executor.Shutdown();
}

}  // namespace
}  // namespace kvc
