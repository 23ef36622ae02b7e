// The cache service end to end through a real gRPC server and client.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <rocksdb/db.h>

#include "cachesvc/disk_tier.h"
#include "tests/server_fixture.h"
#include "worker/synthetic.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;
using ::testing::HasSubstr;
using testing::ClientFor;
using testing::kTokenA;
using testing::kTokenB;
using testing::kTokenQ;

SyntheticSpec Spec(const std::string& tenant, uint64_t seq, uint32_t block_tokens = 16) {
  SyntheticSpec s;
  s.tenant = tenant;
  s.model = "m";
  s.seq_seed = seq;
  s.block_tokens = block_tokens;  // 16 tokens x 8 heads x 128 x fp16 x 2 = 64 KiB
  return s;
}

v1::PutRequest PutOf(const SyntheticSpec& spec, uint32_t first, uint32_t n, bool write_through = false) {
  const std::vector<BlockKey> keys = SyntheticKeys(spec, first + n);
  v1::PutRequest req;
  req.set_write_through(write_through);
  for (uint32_t i = first; i < first + n; ++i) SyntheticBlock(spec, i, keys[i], req.add_blocks());
  return req;
}

struct Fetched {
  std::vector<v1::GetResponse> responses;
  absl::Status status;
};

Fetched GetAll(CacheClient& c, const std::vector<BlockKey>& keys) {
  Fetched f;
  f.status = c.Get(keys, [&](v1::GetResponse& r) { f.responses.push_back(r); });
  return f;
}

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(testing::TestServerOptions(dir_.path())); }

  void Start(const ServerOptions& o) {
    options_ = o;
    auto s = CacheServer::Start(o, &clock_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    a_ = ClientFor(server_->port(), kTokenA);
    b_ = ClientFor(server_->port(), kTokenB);
  }

  void Restart() {
    server_->Shutdown();
    server_.reset();
    Start(options_);
  }

  testing::TempDir dir_;
  FakeClock clock_;
  ServerOptions options_;
  std::unique_ptr<CacheServer> server_;
  std::unique_ptr<CacheClient> a_, b_;
};

TEST_F(ServiceTest, PutThenGetReturnsTheSameBytesFromHost) {
  SyntheticSpec spec = Spec("a", 1);
  v1::PutRequest req = PutOf(spec, 0, 8);
  auto put = a_->Put(req);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->stored(), 8u);

  Fetched f = GetAll(*a_, SyntheticKeys(spec, 8));
  ASSERT_TRUE(f.status.ok()) << f.status;
  ASSERT_EQ(f.responses.size(), 8u);
  for (uint32_t i = 0; i < 8; ++i) {
    EXPECT_EQ(f.responses[i].index(), i);
    EXPECT_EQ(f.responses[i].error_code(), 0);
    EXPECT_EQ(f.responses[i].tier(), v1::TIER_HOST);
    EXPECT_EQ(f.responses[i].block().SerializeAsString(), req.blocks(i).SerializeAsString());
  }
}

TEST_F(ServiceTest, MissIsReportedPerKeyAndTheStreamGoesOn) {
  SyntheticSpec spec = Spec("a", 2);
  ASSERT_TRUE(a_->Put(PutOf(spec, 0, 2)).ok());
  std::vector<BlockKey> keys = SyntheticKeys(spec, 3);  // the third was never put
  std::swap(keys[1], keys[2]);
  Fetched f = GetAll(*a_, keys);
  ASSERT_TRUE(f.status.ok()) << f.status;
  ASSERT_EQ(f.responses.size(), 3u);
  EXPECT_EQ(f.responses[0].error_code(), 0);
  EXPECT_EQ(f.responses[1].error_code(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_EQ(f.responses[1].tier(), v1::TIER_NONE);
  EXPECT_EQ(f.responses[2].error_code(), 0);
}

TEST_F(ServiceTest, BlocksOverflowToRocksDbAndArePromotedOnRead) {
  // 8 MiB host budget; 256 blocks of 64 KiB = 16 MiB, so at least half go to disk.
  SyntheticSpec spec = Spec("a", 3);
  for (uint32_t i = 0; i < 256; i += 32) ASSERT_TRUE(a_->Put(PutOf(spec, i, 32)).ok());
  auto stats = a_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_LE(stats->host().bytes(), stats->host().budget_bytes());
  EXPECT_GT(stats->disk().blocks(), 100u);
  EXPECT_GT(stats->host().evictions(), 100u);

  const std::vector<BlockKey> keys = SyntheticKeys(spec, 256);
  Fetched f = GetAll(*a_, std::vector<BlockKey>(keys.begin(), keys.begin() + 8));
  ASSERT_TRUE(f.status.ok());
  for (const auto& r : f.responses) {
    ASSERT_EQ(r.error_code(), 0) << r.error_message();
    EXPECT_EQ(r.tier(), v1::TIER_DISK) << "the oldest blocks were evicted to disk";
    v1::Block want;
    SyntheticBlock(spec, r.index(), keys[r.index()], &want);
    EXPECT_EQ(r.block().k(), want.k());
  }
  // Promoted: the second read is a host hit.
  f = GetAll(*a_, std::vector<BlockKey>(keys.begin(), keys.begin() + 8));
  for (const auto& r : f.responses) EXPECT_EQ(r.tier(), v1::TIER_HOST);
}

TEST_F(ServiceTest, LookupCountsTheCachedLeadingPrefixAcrossLayers) {
  SyntheticSpec l0 = Spec("a", 4), l1 = Spec("a", 4);
  l1.layer = 1;
  ASSERT_TRUE(a_->Put(PutOf(l0, 0, 10)).ok());
  ASSERT_TRUE(a_->Put(PutOf(l1, 0, 6)).ok());
  v1::LookupRequest req;
  req.set_tenant("a");
  req.set_model("m");
  req.add_layers(0);
  req.add_layers(1);
  for (const Hash128& h : SyntheticChain(l0, 12)) {
    auto* p = req.add_hashes();
    p->set_hi(h.hi);
    p->set_lo(h.lo);
  }
  auto r = a_->Lookup(req);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cached_blocks(), 6u) << "layer 1 holds only the first 6";
  ASSERT_EQ(r->tiers_size(), 6);
  EXPECT_EQ(r->tiers(0), v1::TIER_HOST);

  // A hole stops the prefix even if later blocks are present.
  ASSERT_EQ(a_->Delete(std::vector<BlockKey>{SyntheticKeys(l0, 3)[2]}).value(), 1u);
  req.clear_layers();
  req.add_layers(0);
  EXPECT_EQ(a_->Lookup(req)->cached_blocks(), 2u);
}

TEST_F(ServiceTest, DeleteRemovesFromEveryTier) {
  SyntheticSpec spec = Spec("a", 5);
  ASSERT_TRUE(a_->Put(PutOf(spec, 0, 4, /*write_through=*/true)).ok());
  const std::vector<BlockKey> keys = SyntheticKeys(spec, 4);
  auto n = a_->Delete(keys);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 4u);
  Restart();  // the disk copy is gone too
  Fetched f = GetAll(*a_, keys);
  for (const auto& r : f.responses) EXPECT_EQ(r.error_code(), static_cast<int>(absl::StatusCode::kNotFound));
}

TEST_F(ServiceTest, GracefulShutdownFlushesHostBlocksSoRestartFindsThem) {
  SyntheticSpec spec = Spec("a", 6);
  ASSERT_TRUE(a_->Put(PutOf(spec, 0, 16)).ok());  // write-back, not write-through
  Restart();
  Fetched f = GetAll(*a_, SyntheticKeys(spec, 16));
  ASSERT_TRUE(f.status.ok());
  ASSERT_EQ(f.responses.size(), 16u);
  for (const auto& r : f.responses) {
    EXPECT_EQ(r.error_code(), 0) << r.error_message();
    EXPECT_EQ(r.tier(), v1::TIER_DISK);
  }
}

// Tiers of the cached prefix of `spec`'s first n blocks, without touching them.
std::vector<int> LookupTiers(CacheClient& c, const SyntheticSpec& spec, uint32_t n) {
  v1::LookupRequest req;
  req.set_tenant(spec.tenant);
  req.set_model(spec.model);
  req.add_layers(spec.layer);
  for (const Hash128& h : SyntheticChain(spec, n)) {
    auto* p = req.add_hashes();
    p->set_hi(h.hi);
    p->set_lo(h.lo);
  }
  auto r = c.Lookup(req);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? std::vector<int>(r->tiers().begin(), r->tiers().end()) : std::vector<int>{};
}

TEST_F(ServiceTest, PinnedBlocksStayInHostUntilTheLeaseExpires) {
  // Blocks written once and never read are the first S3-FIFO evicts; pinned,
  // they must stay.
  SyntheticSpec cold = Spec("a", 7);
  ASSERT_TRUE(a_->Put(PutOf(cold, 0, 8)).ok());
  auto pin = a_->Pin(SyntheticKeys(cold, 8), 60'000);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->pinned(), 8u);
  EXPECT_EQ(a_->Stats()->pinned_blocks(), 8u);

  SyntheticSpec flood = Spec("a", 8);
  for (uint32_t i = 0; i < 384; i += 32) ASSERT_TRUE(a_->Put(PutOf(flood, i, 32)).ok());
  EXPECT_THAT(LookupTiers(*a_, cold, 8), ::testing::Each(v1::TIER_HOST)) << "a pinned block was evicted";
  // Without the pin the same pressure evicts blocks written at the same time.
  EXPECT_THAT(LookupTiers(*a_, flood, 8), ::testing::Each(v1::TIER_DISK));

  clock_.Advance(absl::Seconds(61));  // the lease is over
  EXPECT_EQ(a_->Stats()->pinned_blocks(), 0u);
  SyntheticSpec flood2 = Spec("a", 9);
  for (uint32_t i = 0; i < 384; i += 32) ASSERT_TRUE(a_->Put(PutOf(flood2, i, 32)).ok());
  std::vector<int> tiers = LookupTiers(*a_, cold, 8);
  ASSERT_EQ(tiers.size(), 8u) << "unpinned blocks are written back, not lost";
  EXPECT_THAT(tiers, ::testing::Contains(v1::TIER_DISK));
  EXPECT_EQ(a_->Unpin(pin->lease_id()).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ServiceTest, UnpinReleasesTheLease) {
  SyntheticSpec spec = Spec("a", 10);
  ASSERT_TRUE(a_->Put(PutOf(spec, 0, 3)).ok());
  auto pin = a_->Pin(SyntheticKeys(spec, 3), 60'000);
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(b_->Unpin(pin->lease_id()).status().code(), absl::StatusCode::kNotFound)
      << "another tenant cannot release it";
  auto n = a_->Unpin(pin->lease_id());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(*n, 3u);
  EXPECT_EQ(a_->Stats()->pinned_blocks(), 0u);
}

TEST_F(ServiceTest, PinOfAMissingBlockIsNotFoundAndLeavesNoLease) {
  SyntheticSpec spec = Spec("a", 11);
  ASSERT_TRUE(a_->Put(PutOf(spec, 0, 1)).ok());
  auto pin = a_->Pin(SyntheticKeys(spec, 2), 60'000);
  EXPECT_EQ(pin.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(pin.status().message(), HasSubstr("keys[1]"));
  EXPECT_EQ(a_->Stats()->pinned_blocks(), 0u);
}

TEST_F(ServiceTest, TenantsCannotTouchEachOthersBlocks) {
  SyntheticSpec spec = Spec("a", 12);
  ASSERT_TRUE(a_->Put(PutOf(spec, 0, 2)).ok());
  const std::vector<BlockKey> keys = SyntheticKeys(spec, 2);

  EXPECT_EQ(b_->Put(PutOf(spec, 0, 2)).status().code(), absl::StatusCode::kPermissionDenied);
  Fetched f = GetAll(*b_, keys);
  EXPECT_EQ(f.status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(f.responses.empty());
  EXPECT_EQ(b_->Delete(keys).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(b_->Pin(keys, 1000).status().code(), absl::StatusCode::kPermissionDenied);
  v1::LookupRequest lookup;
  lookup.set_tenant("a");
  lookup.set_model("m");
  lookup.add_layers(0);
  EXPECT_EQ(b_->Lookup(lookup).status().code(), absl::StatusCode::kPermissionDenied);
  auto stats = b_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->tenant(), "b");
  EXPECT_EQ(stats->tenant_host_bytes(), 0u);

  // a's blocks are intact.
  f = GetAll(*a_, keys);
  ASSERT_TRUE(f.status.ok());
  for (const auto& r : f.responses) EXPECT_EQ(r.error_code(), 0);
}

TEST_F(ServiceTest, MissingOrWrongTokenIsUnauthenticated) {
  auto none = ClientFor(server_->port(), "");
  EXPECT_EQ(none->Stats().status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(none->Stats().status().message(), HasSubstr("authorization"));
  auto wrong = ClientFor(server_->port(), "token-of-tenant-a-0123456780");
  EXPECT_EQ(wrong->Stats().status().code(), absl::StatusCode::kUnauthenticated);
  Fetched f = GetAll(*wrong, SyntheticKeys(Spec("a", 1), 1));
  EXPECT_EQ(f.status.code(), absl::StatusCode::kUnauthenticated);
  // The health service needs no token.
  auto h = none->Healthy();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(*h);
}

TEST_F(ServiceTest, TenantQuotaEvictsOnlyTheTenantsOwnBlocks) {
  auto q = ClientFor(server_->port(), kTokenQ);
  SyntheticSpec qs = Spec("q", 13);
  // 1 MiB quota per tier; 64 KiB blocks: 64 of them need about 4 MiB.
  for (uint32_t i = 0; i < 64; i += 8) ASSERT_TRUE(q->Put(PutOf(qs, i, 8)).ok());
  auto stats = q->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_LE(stats->tenant_host_bytes(), 1u << 20);
  EXPECT_LE(stats->tenant_disk_bytes(), 1u << 20);
  EXPECT_EQ(stats->tenant_quota_bytes(), 1u << 20);
  // The newest blocks are there.
  Fetched f = GetAll(*q, std::vector<BlockKey>{SyntheticKeys(qs, 64).back()});
  EXPECT_EQ(f.responses.at(0).error_code(), 0);

  // One batch larger than the quota is refused whole.
  auto big = q->Put(PutOf(Spec("q", 14), 0, 24));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(big.status().message(), HasSubstr("quota"));
}

TEST_F(ServiceTest, ConcurrentClientsEachSeeTheirOwnBlocks) {
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto c = ClientFor(server_->port(), t % 2 ? kTokenB : kTokenA);
      SyntheticSpec spec = Spec(t % 2 ? "b" : "a", 100 + t, 4);  // 16 KiB blocks
      for (int round = 0; round < 5; ++round) {
        v1::PutRequest req = PutOf(spec, round * 16, 16);
        if (!c->Put(req).ok()) ++failures;
        const std::vector<BlockKey> keys = SyntheticKeys(spec, (round + 1) * 16);
        Fetched f = GetAll(*c, keys);
        if (!f.status.ok() || f.responses.size() != keys.size()) {
          ++failures;
          continue;
        }
        for (const auto& r : f.responses) {
          v1::Block want;
          SyntheticBlock(spec, r.index(), keys[r.index()], &want);
          if (r.error_code() != 0 || r.block().k() != want.k() || r.block().v() != want.v()) ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  auto stats = a_->Stats();
  EXPECT_LE(stats->host().bytes(), stats->host().budget_bytes());
}

TEST_F(ServiceTest, MetricsEndpointServesPrometheusText) {
  options_.metrics_address = "127.0.0.1:0";
  Restart();
  ASSERT_TRUE(a_->Put(PutOf(Spec("a", 15), 0, 2)).ok());
  (void)a_->Stats();
  ASSERT_GT(server_->metrics_port(), 0);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(server_->metrics_port());
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
  ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  std::string body;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) body.append(buf, n);
  close(fd);
  EXPECT_THAT(body, HasSubstr("200 OK"));
  EXPECT_THAT(body, HasSubstr("kvcache_requests_total{code=\"OK\",method=\"Put\"} 1"));
  EXPECT_THAT(body, HasSubstr("kvcache_request_duration_seconds_bucket{method=\"Put\""));
  EXPECT_THAT(body, HasSubstr("kvcache_tier_bytes{tier=\"host\"}"));
  EXPECT_THAT(body, HasSubstr("kvcache_put_blocks_total 2"));
}

TEST_F(ServiceTest, CorruptBlockOnDiskIsReportedDroppedAndNeverServed) {
  SyntheticSpec spec = Spec("a", 16);
  ASSERT_TRUE(a_->Put(PutOf(spec, 0, 4, /*write_through=*/true)).ok());
  const std::vector<BlockKey> keys = SyntheticKeys(spec, 4);
  server_->Shutdown();
  server_.reset();
  {  // Flip bytes in the middle of block 2's stored value, as a bad disk would.
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
        {kBlocksColumnFamily, rocksdb::ColumnFamilyOptions()},
        {kMetaColumnFamily, rocksdb::ColumnFamilyOptions()}};
    std::vector<rocksdb::ColumnFamilyHandle*> h;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), options_.data_dir + "/rocksdb", cfs, &h, &db).ok());
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), h[1], keys[2].Encode(), &value).ok());
    for (size_t i = value.size() / 4; i < value.size() / 4 + 64; ++i) value[i] ^= 0x5a;  // inside k
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), h[1], keys[2].Encode(), value).ok());
    for (auto* cf : h) ASSERT_TRUE(db->DestroyColumnFamilyHandle(cf).ok());
    ASSERT_TRUE(db->Close().ok());
    delete db;
  }
  Start(options_);
  Fetched f = GetAll(*a_, keys);
  ASSERT_TRUE(f.status.ok()) << f.status;
  ASSERT_EQ(f.responses.size(), 4u);
  EXPECT_EQ(f.responses[2].error_code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_THAT(f.responses[2].error_message(), HasSubstr("checksum"));
  EXPECT_FALSE(f.responses[2].has_block()) << "a corrupt block is never served";
  for (int i : {0, 1, 3}) EXPECT_EQ(f.responses[i].error_code(), 0);
  EXPECT_EQ(a_->Stats()->corrupt_blocks_dropped(), 1u);
  // Dropped: the next read is a plain miss and lookups stop before it.
  f = GetAll(*a_, {keys[2]});
  EXPECT_EQ(f.responses.at(0).error_code(), static_cast<int>(absl::StatusCode::kNotFound));
  EXPECT_THAT(server_->metrics()->RenderText(), HasSubstr("kvcache_get_blocks_total{result=\"corrupt\"} 1"));
}

TEST_F(ServiceTest, KeysOfAnUnknownTenantAreRefused) {
  v1::PutRequest req = PutOf(Spec("nobody", 17), 0, 1);
  absl::Status s = a_->Put(req).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.message(), HasSubstr("tenant 'nobody'"));
}

TEST_F(ServiceTest, ReloadRotatesTokensAndKeepsThemOnABadFile) {
  SyntheticSpec spec = Spec("a", 18);
  ASSERT_TRUE(a_->Put(PutOf(spec, 0, 1)).ok());
  const std::string rotated = "rotated-token-of-a-0123456789";
  std::ofstream(options_.auth_tokens_file) << "a " << rotated << "\n";  // b is gone
  ASSERT_TRUE(server_->ReloadTenants().ok());
  EXPECT_EQ(a_->Stats().status().code(), absl::StatusCode::kUnauthenticated) << "old token still accepted";
  EXPECT_EQ(b_->Stats().status().code(), absl::StatusCode::kUnauthenticated) << "removed tenant still accepted";
  auto a2 = ClientFor(server_->port(), rotated);
  Fetched f = GetAll(*a2, SyntheticKeys(spec, 1));
  ASSERT_TRUE(f.status.ok()) << f.status;
  EXPECT_EQ(f.responses.at(0).error_code(), 0) << "the tenant's blocks survive a token rotation";

  std::ofstream(options_.auth_tokens_file) << "a short\n";
  absl::Status bad = server_->ReloadTenants();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("line 1"));
  EXPECT_TRUE(a2->Stats().ok()) << "a bad file must not lock everybody out";
}

TEST_F(ServiceTest, ChangedTokensFileIsPickedUpWithoutASignal) {
  options_.auth_reload_interval = absl::Milliseconds(20);
  Restart();
  const std::string added = "token-of-tenant-d-0123456789";
  std::ofstream(options_.auth_tokens_file, std::ios::app) << "d " << added << "\n";
  auto d = ClientFor(server_->port(), added);
  absl::Status s;
  for (int i = 0; i < 200 && !(s = d->Stats().status()).ok(); ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(a_->Stats().ok()) << "unchanged tenants keep working";
}

TEST_F(ServiceTest, ShutdownDrainsARunningStreamAndRefusesNewCalls) {
  SyntheticSpec spec = Spec("a", 19);  // 64 KiB blocks
  constexpr uint32_t kBlocks = 96;     // 6 MiB: far more than the slow client's window
  for (uint32_t i = 0; i < kBlocks; i += 32) ASSERT_TRUE(a_->Put(PutOf(spec, i, 32, true)).ok());
  ClientOptions slow_opts;
  slow_opts.address = "127.0.0.1:" + std::to_string(server_->port());
  slow_opts.token = kTokenA;
  slow_opts.max_message_bytes = 1 << 20;  // also its flow-control window
  auto slow = *CacheClient::Connect(slow_opts);

  v1::GetRequest req;
  for (const BlockKey& k : SyntheticKeys(spec, kBlocks)) k.ToProto(req.add_keys());
  grpc::ClientContext ctx;
  slow->PrepareContext(&ctx);
  auto reader = slow->stub()->Get(&ctx, req);
  v1::GetResponse r;
  ASSERT_TRUE(reader->Read(&r));  // the stream is running

  std::thread stopper([&] { server_->Shutdown(); });
  absl::Status refused;
  for (int i = 0; i < 100; ++i) {  // until the drain has begun
    refused = a_->Stats().status();
    if (!refused.ok()) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kUnavailable);
  uint32_t received = 1;
  while (reader->Read(&r)) {
    EXPECT_EQ(r.error_code(), 0);
    ++received;
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(received, kBlocks) << "the running stream was cut instead of drained";
  stopper.join();
  server_.reset();
}

TEST_F(ServiceTest, InfoReturnsTheLimits) {
  auto info = a_->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->limits().max_batch_blocks(), options_.limits.max_batch_blocks);
  EXPECT_EQ(info->limits().max_block_bytes(), options_.limits.max_block_bytes);
  EXPECT_FALSE(info->version().empty());
}

}  // namespace
}  // namespace kvc

namespace kvc {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(ServiceTlsTest, TlsClientsConnectAndPlaintextClientsCannot) {
  testing::TempDir dir;
  const std::string cert = dir.path() + "/cert.pem", key = dir.path() + "/key.pem";
  const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                          "-addext subjectAltName=DNS:localhost -keyout " + key + " -out " + cert +
                          " >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "openssl is not installed";
  ServerOptions o = testing::TestServerOptions(dir.path());
  o.tls_cert_file = cert;
  o.tls_key_file = key;
  auto server = CacheServer::Start(o);
  ASSERT_TRUE(server.ok()) << server.status();

  ClientOptions co;
  co.address = "127.0.0.1:" + std::to_string((*server)->port());
  co.token = testing::kTokenA;
  co.tls_root_certs_pem = ReadAll(cert);
  co.tls_server_name = "localhost";
  co.timeout = absl::Seconds(10);
  auto tls = CacheClient::Connect(co);
  ASSERT_TRUE(tls.ok());
  SyntheticSpec spec = Spec("a", 50);
  ASSERT_TRUE((*tls)->Put(PutOf(spec, 0, 2)).ok());
  Fetched f = GetAll(**tls, SyntheticKeys(spec, 2));
  ASSERT_TRUE(f.status.ok()) << f.status;
  EXPECT_EQ(f.responses.size(), 2u);

  co.tls_root_certs_pem.clear();
  co.timeout = absl::Seconds(2);
  auto plain = CacheClient::Connect(co);
  EXPECT_EQ((*plain)->Stats().status().code(), absl::StatusCode::kUnavailable);
}

TEST(ServiceTlsTest, MissingCertificateFailsStartWithTheFileName) {
  testing::TempDir dir;
  ServerOptions o = testing::TestServerOptions(dir.path());
  o.tls_cert_file = dir.path() + "/nope.pem";
  o.tls_key_file = dir.path() + "/nope.key";
  auto server = CacheServer::Start(o);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(server.status().message(), HasSubstr("nope.pem"));
}

}  // namespace
}  // namespace kvc
