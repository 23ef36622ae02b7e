// A real crash: a child process writes blocks with sync=true and reports each
// acknowledged Put on a pipe; the parent SIGKILLs it mid-stream, reopens the
// directory and checks that every acknowledged block survived, verified, with
// byte accounting that matches what is there.
//
// Both children are forked at the start of the one test, before the parent
// has created any thread or touched RocksDB (whose background threads would
// not survive a fork). Each child waits on a "go" pipe so they run one at a
// time. The children use only the DiskTier and write(2).
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cachesvc/disk_tier.h"
#include "gtest/gtest.h"
#include "tests/temp_dir.h"
#include "tests/test_blocks.h"

namespace kvc {
namespace {

constexpr uint64_t kBlockKv = 64 * 1024;
constexpr int kMaxPuts = 100000;  // a child never gets this far before the kill
constexpr int kKillAfterAcks = 40;

BlockPtr Block(uint64_t seed) { return testing::MakeBlock(testing::SpecOfSize(kBlockKv, seed)); }

DiskTierOptions Options(const std::string& path, uint64_t capacity) {
  DiskTierOptions o;
  o.path = path;
  o.capacity_bytes = capacity;
  o.block_cache_bytes = 1 << 20;
  o.write_buffer_bytes = 1 << 20;  // flushes to blob files while the child runs
  o.blob_file_bytes = 1 << 20;
  return o;
}

int ThreadCount() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    int n = 0;
    if (line.rfind("Threads:", 0) == 0 && absl::SimpleAtoi(line.substr(8), &n)) return n;
  }
  return -1;
}

struct Child {
  pid_t pid = -1;
  int go_fd = -1;   // parent writes one byte to start the child
  int ack_fd = -1;  // child writes "<seed>\n" after each acknowledged Put
};

// In the child: wait for "go", then Put blocks 0, 1, 2, ... with sync=true.
[[noreturn]] void RunChild(int go_fd, int ack_fd, const std::string& path, uint64_t capacity) {
  char c;
  while (read(go_fd, &c, 1) < 0 && errno == EINTR) {
  }
  absl::StatusOr<std::unique_ptr<DiskTier>> tier = DiskTier::Open(Options(path, capacity));
  if (!tier.ok()) _exit(2);
  for (int seed = 0; seed < kMaxPuts; ++seed) {
    if (!(*tier)->Put(Block(seed), {.sync = true}).ok()) _exit(3);
    const std::string line = absl::StrCat(seed, "\n");
    if (write(ack_fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(4);
  }
  _exit(0);
}

Child Fork(const std::string& path, uint64_t capacity) {
  int go[2], ack[2];
  if (pipe(go) != 0 || pipe(ack) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    close(go[1]);
    close(ack[0]);
    RunChild(go[0], ack[1], path, capacity);
  }
  close(go[0]);
  close(ack[1]);
  return Child{pid, go[1], ack[0]};
}

// Starts the child, SIGKILLs it after `kill_after` acknowledgements, and
// returns every seed it acknowledged (including lines still in the pipe).
std::vector<uint64_t> RunAndKill(const Child& child, int kill_after, int* wait_status) {
  std::vector<uint64_t> acked;
  std::string buf;
  bool killed = false;
  EXPECT_EQ(write(child.go_fd, "g", 1), 1);
  close(child.go_fd);
  char chunk[256];
  for (;;) {
    ssize_t n = read(child.ack_fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // EOF: the child is dead (or finished)
    buf.append(chunk, n);
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      uint64_t seed = 0;
      EXPECT_TRUE(absl::SimpleAtoi(buf.substr(0, nl), &seed)) << buf;
      acked.push_back(seed);
      buf.erase(0, nl + 1);
    }
    if (!killed && static_cast<int>(acked.size()) >= kill_after) {
      kill(child.pid, SIGKILL);
      killed = true;
    }
  }
  close(child.ack_fd);
  waitpid(child.pid, wait_status, 0);
  return acked;
}

class DiskTierCrashTest : public ::testing::Test {
 protected:
  testing::TempDir tmp_;
  const std::string dir_ = tmp_.path();
};

TEST_F(DiskTierCrashTest, AcknowledgedSyncPutsSurviveSigkill) {
  ASSERT_EQ(ThreadCount(), 1) << "fork must happen before any thread exists";
  // Positions are varints, so later seeds' blocks are a few bytes larger: size
  // the budget by the largest so that exactly kBudgetBlocks of any seed fit.
  const uint64_t charge = Block(kMaxPuts)->charge();
  const uint64_t kBudgetBlocks = 8;
  // No budget pressure: every acknowledged block must be there.
  Child roomy = Fork(dir_ + "/roomy", 1ull << 30);
  ASSERT_GT(roomy.pid, 0);
  // Budget of 8 blocks: the child evicts in every batch once full.
  Child tight = Fork(dir_ + "/tight", kBudgetBlocks * charge);
  ASSERT_GT(tight.pid, 0);

  int status = 0;
  std::vector<uint64_t> roomy_acked = RunAndKill(roomy, kKillAfterAcks, &status);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "roomy child exited with status " << status;
  std::vector<uint64_t> tight_acked = RunAndKill(tight, kKillAfterAcks, &status);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "tight child exited with status " << status;
  ASSERT_GE(roomy_acked.size(), static_cast<size_t>(kKillAfterAcks));
  ASSERT_GE(tight_acked.size(), static_cast<size_t>(kKillAfterAcks));

  // The seeds a child may have written: everything acknowledged, plus the
  // Put in flight at the kill.
  auto check_accounting = [&](DiskTier& tier, size_t acked) {
    uint64_t bytes = 0, blocks = 0;
    for (uint64_t s = 0; s <= acked; ++s) {
      if (!tier.Contains(testing::MakeKey(testing::SpecOfSize(kBlockKv, s)))) continue;
      ++blocks;
      bytes += Block(s)->charge();
    }
    TierUsage u = tier.Usage();
    EXPECT_EQ(u.blocks, blocks);
    EXPECT_EQ(u.bytes, bytes);
    EXPECT_EQ(u.corrupt, 0u);
    uint64_t walked = 0;
    EXPECT_TRUE(tier.ForEach([&](const BlockPtr& b) { walked += b->charge(); }).ok());
    EXPECT_EQ(walked, bytes);
  };

  {
    auto tier = DiskTier::Open(Options(dir_ + "/roomy", 1ull << 30));
    ASSERT_TRUE(tier.ok()) << tier.status();
    for (uint64_t s : roomy_acked) {
      BlockPtr want = Block(s);
      EXPECT_TRUE((*tier)->Contains(want->key())) << "acknowledged block " << s << " lost";
      absl::StatusOr<BlockPtr> got = (*tier)->Get(want->key());
      ASSERT_TRUE(got.ok()) << "block " << s << ": " << got.status();
      EXPECT_EQ((*got)->checksum(), want->checksum());
      EXPECT_EQ((*got)->wire(), want->wire());
    }
    check_accounting(**tier, roomy_acked.size());
  }
  {
    auto tier = DiskTier::Open(Options(dir_ + "/tight", kBudgetBlocks * charge));
    ASSERT_TRUE(tier.ok()) << tier.status();
    EXPECT_LE((*tier)->Usage().bytes, kBudgetBlocks * charge);
    // Oldest-first: the newest budget-1 acknowledged blocks must be present
    // (the Put in flight may have evicted one more).
    for (size_t i = tight_acked.size() - (kBudgetBlocks - 1); i < tight_acked.size(); ++i) {
      BlockPtr want = Block(tight_acked[i]);
      absl::StatusOr<BlockPtr> got = (*tier)->Get(want->key());
      ASSERT_TRUE(got.ok()) << "block " << tight_acked[i] << ": " << got.status();
      EXPECT_EQ((*got)->checksum(), want->checksum());
    }
    check_accounting(**tier, tight_acked.size());
  }
}

}  // namespace
}  // namespace kvc
