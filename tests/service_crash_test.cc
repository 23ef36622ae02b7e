// The real kvcached binary as a child process: SIGKILL and restart keep every
// block acknowledged as durable; SIGTERM drains and flushes; the binaries'
// command lines behave.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/kvcached_child.h"
#include "tests/server_fixture.h"
#include "worker/synthetic.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;
using ::testing::HasSubstr;

using Kvcached = testing::KvcachedChild;

SyntheticSpec Spec(uint64_t seq) {
  SyntheticSpec s;
  s.tenant = "a";
  s.model = "m";
  s.seq_seed = seq;
  return s;  // 64 KiB blocks
}

v1::PutRequest PutOf(const SyntheticSpec& spec, const std::vector<BlockKey>& keys, uint32_t first,
                     uint32_t n, bool write_through) {
  v1::PutRequest req;
  req.set_write_through(write_through);
  for (uint32_t i = first; i < first + n; ++i) SyntheticBlock(spec, i, keys[i], req.add_blocks());
  return req;
}

// Counts blocks of `spec` in [0, n) that come back intact.
int CountIntact(CacheClient& c, const SyntheticSpec& spec, uint32_t n) {
  const std::vector<BlockKey> keys = SyntheticKeys(spec, n);
  int intact = 0;
  for (uint32_t i = 0; i < n; i += 32) {
    const uint32_t m = std::min<uint32_t>(32, n - i);
    absl::Status s = c.Get(std::span(keys).subspan(i, m), [&](v1::GetResponse& r) {
      if (r.error_code() != 0) return;
      v1::Block want;
      SyntheticBlock(spec, i + r.index(), keys[i + r.index()], &want);
      intact += (r.block().k() == want.k() && r.block().v() == want.v()) ? 1 : 0;
    });
    EXPECT_TRUE(s.ok()) << s;
  }
  return intact;
}

TEST(ServiceCrashTest, DurableBlocksSurviveSigkillAndRestart) {
  testing::TempDir dir;
  SyntheticSpec durable = Spec(1);
  const uint32_t kBlocks = 192;  // 12 MiB: three times the host tier
  const std::vector<BlockKey> keys = SyntheticKeys(durable, kBlocks);
  uint32_t acked = 0;
  {
    Kvcached child(dir.path());
    ASSERT_GT(child.port(), 0) << "kvcached did not start";
    auto c = testing::ClientFor(child.port(), testing::kTokenA);
    for (uint32_t i = 0; i < kBlocks; i += 16) {
      auto r = c->Put(PutOf(durable, keys, i, 16, /*write_through=*/true));
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(r->durable());
      acked += 16;
    }
    // Blocks still in flight when the process dies are allowed to be lost;
    // acknowledged durable ones are not.
    std::thread writer([&] {
      SyntheticSpec extra = Spec(2);
      const std::vector<BlockKey> ek = SyntheticKeys(extra, 64);
      for (uint32_t i = 0; i < 64; i += 16) (void)c->Put(PutOf(extra, ek, i, 16, true));
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const int status = child.Kill(SIGKILL);
    writer.join();
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }
  Kvcached child(dir.path());
  ASSERT_GT(child.port(), 0) << "kvcached did not restart";
  auto c = testing::ClientFor(child.port(), testing::kTokenA);

  v1::LookupRequest lookup;
  lookup.set_tenant("a");
  lookup.set_model("m");
  lookup.add_layers(0);
  for (const BlockKey& k : keys) {
    auto* h = lookup.add_hashes();
    h->set_hi(k.hash.hi);
    h->set_lo(k.hash.lo);
  }
  auto found = c->Lookup(lookup);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->cached_blocks(), acked) << "lookup lost acknowledged durable blocks";
  EXPECT_EQ(CountIntact(*c, durable, kBlocks), static_cast<int>(acked)) << "get lost them";
}

TEST(ServiceCrashTest, SigtermDrainsFlushesAndExitsZero) {
  testing::TempDir dir;
  SyntheticSpec spec = Spec(3);
  const std::vector<BlockKey> keys = SyntheticKeys(spec, 32);
  {
    Kvcached child(dir.path());
    ASSERT_GT(child.port(), 0);
    auto c = testing::ClientFor(child.port(), testing::kTokenA);
    ASSERT_TRUE(c->Put(PutOf(spec, keys, 0, 32, /*write_through=*/false)).ok());
    const int status = child.Kill(SIGTERM);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
  }
  Kvcached child(dir.path());
  ASSERT_GT(child.port(), 0);
  auto c = testing::ClientFor(child.port(), testing::kTokenA);
  EXPECT_EQ(CountIntact(*c, spec, 32), 32) << "host-tier blocks were not flushed on SIGTERM";
}

TEST(ServiceCrashTest, SighupReloadsTheTokensFile) {
  testing::TempDir dir;
  Kvcached child(dir.path());
  ASSERT_GT(child.port(), 0);
  const std::string token = "token-of-new-tenant-c-01234567";
  auto c = testing::ClientFor(child.port(), token);
  EXPECT_EQ(c->Stats().status().code(), absl::StatusCode::kUnauthenticated);
  std::ofstream(dir.path() + "/tokens", std::ios::app) << "c " << token << "\n";
  child.Signal(SIGHUP);
  absl::Status s;
  for (int i = 0; i < 100; ++i) {
    s = c->Stats().status();
    if (s.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(c->Stats()->tenant(), "c");
}

std::string RunCommand(const std::string& cmd, int* exit_code) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  const int status = pclose(p);
  *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

TEST(CommandLineTest, HelpAndBadSettings) {
  int code = -1;
  EXPECT_THAT(RunCommand(std::string(KVC_KVCACHED_PATH) + " --help", &code), HasSubstr("--host_capacity_bytes"));
  EXPECT_THAT(RunCommand(std::string(KVC_CLI_PATH) + " --help", &code), HasSubstr("demo"));
  std::string out = RunCommand(std::string(KVC_KVCACHED_PATH) + " --host_capacity_bytes=lots", &code);
  EXPECT_EQ(code, 2);
  EXPECT_THAT(out, HasSubstr("--host_capacity_bytes: 'lots' is not a byte size"));
  out = RunCommand(std::string(KVC_KVCACHED_PATH) + " --host_shards=3 --check_config", &code);
  EXPECT_EQ(code, 2);
  EXPECT_THAT(out, HasSubstr("host_shards: 3 is not a power of two"));
  out = RunCommand(std::string(KVC_KVCACHED_PATH) + " --config=/nonexistent.yaml", &code);
  EXPECT_EQ(code, 2);
  EXPECT_THAT(out, HasSubstr("cannot read config file"));
}

TEST(CommandLineTest, CliDemoRunsAgainstARealServer) {
  testing::TempDir dir;
  Kvcached child(dir.path());
  ASSERT_GT(child.port(), 0);
  int code = -1;
  const std::string target = " --target=127.0.0.1:" + std::to_string(child.port());
  const std::string auth = std::string(" --token=") + testing::kTokenA + " --tenant=a";
  std::string out = RunCommand(std::string(KVC_CLI_PATH) + target + auth + " demo", &code);
  EXPECT_EQ(code, 0) << out;
  EXPECT_THAT(out, HasSubstr("came back intact"));
  out = RunCommand(std::string(KVC_CLI_PATH) + target + auth + " --seq=77 --blocks=4 put", &code);
  EXPECT_EQ(code, 0) << out;
  out = RunCommand(std::string(KVC_CLI_PATH) + target + auth + " --seq=77 --blocks=6 lookup", &code);
  EXPECT_THAT(out, HasSubstr("4 of 6 leading blocks"));
  out = RunCommand(std::string(KVC_CLI_PATH) + target + " --token=nope --tenant=a stats", &code);
  EXPECT_EQ(code, 1);
  EXPECT_THAT(out, HasSubstr("UNAUTHENTICATED"));
  out = RunCommand(std::string(KVC_CLI_PATH) + target + auth + " health", &code);
  EXPECT_EQ(code, 0);
  EXPECT_THAT(out, HasSubstr("SERVING"));
}

}  // namespace
}  // namespace kvc
