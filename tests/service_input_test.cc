// Bad input through a real gRPC server: every case gets a clear error that
// names what was wrong, and the service keeps serving everybody else.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/generic/generic_stub.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "common/hash.h"
#include "tests/server_fixture.h"
#include "tests/test_blocks.h"
#include "worker/synthetic.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;
using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::ClientFor;
using testing::kTokenA;

class ServiceInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions o = testing::TestServerOptions(dir_.path());
    o.limits.max_block_bytes = 1 << 20;
    o.limits.max_batch_blocks = 8;
    o.limits.max_message_bytes = 4 << 20;
    auto s = CacheServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    a_ = ClientFor(server_->port(), kTokenA);
  }

  // A valid block of tenant "a" with k+v of about `bytes`.
  v1::Block Block(uint64_t bytes, uint64_t seed = 1) {
    testing::BlockSpec spec = testing::SpecOfSize(bytes, seed, "a");
    return testing::MakeBlockProto(spec);
  }

  absl::Status PutOne(const v1::Block& b) {
    v1::PutRequest req;
    *req.add_blocks() = b;
    return a_->Put(req).status();
  }

  // The service still stores and serves a good block.
  void ExpectStillServing() {
    v1::Block good = Block(64 << 10, 999);
    ASSERT_TRUE(PutOne(good).ok());
    std::vector<BlockKey> keys = {BlockKey::FromProto(good.key())};
    int hits = 0;
    ASSERT_TRUE(a_->Get(keys, [&](v1::GetResponse& r) { hits += r.error_code() == 0; }).ok());
    EXPECT_EQ(hits, 1);
  }

  testing::TempDir dir_;
  std::unique_ptr<CacheServer> server_;
  std::unique_ptr<CacheClient> a_;
};

TEST_F(ServiceInputTest, OversizedBlockNamesTheLimit) {
  absl::Status s = PutOne(Block(2 << 20));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("blocks[0]"), HasSubstr("max_block_bytes is 1048576")));
  ExpectStillServing();
}

TEST_F(ServiceInputTest, ShapeThatDoesNotMatchThePayloadIsRefused) {
  v1::Block b = Block(64 << 10);
  b.set_num_kv_heads(b.num_kv_heads() * 2);
  absl::Status s = PutOne(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("does not match shape"));
  ExpectStillServing();
}

TEST_F(ServiceInputTest, DtypeThatDoesNotMatchThePayloadIsRefused) {
  v1::Block b = Block(64 << 10);
  b.set_dtype(v1::DTYPE_FP32);  // the payload is fp16
  absl::Status s = PutOne(b);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("4-byte dtype"));
  b.set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_THAT(PutOne(b).message(), HasSubstr("is not one of FP32, FP16, BF16"));
}

TEST_F(ServiceInputTest, WrongChecksumOrPositionsAreRefused) {
  v1::Block b = Block(64 << 10);
  b.set_checksum(b.checksum() + 1);
  EXPECT_THAT(PutOne(b).message(), HasSubstr("checksum mismatch"));
  b = Block(64 << 10);
  b.add_positions(7);
  EXPECT_THAT(PutOne(b).message(), HasSubstr("positions has"));
}

TEST_F(ServiceInputTest, EmptyAndOversizedBatchesAreRefused) {
  absl::Status s = a_->Put(v1::PutRequest()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("Put blocks is empty"));

  v1::PutRequest big;
  for (int i = 0; i < 9; ++i) *big.add_blocks() = Block(4 << 10, i);
  s = a_->Put(big).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("limit max_batch_blocks is 8"));

  std::vector<BlockKey> keys(9, BlockKey::FromProto(Block(4 << 10).key()));
  s = a_->Get(keys, [](v1::GetResponse&) {});
  EXPECT_THAT(s.message(), HasSubstr("Get keys has 9 entries"));
  EXPECT_THAT(a_->Get({}, [](v1::GetResponse&) {}).message(), HasSubstr("Get keys is empty"));
  EXPECT_THAT(a_->Delete(keys).status().message(), HasSubstr("max_batch_blocks"));
  ExpectStillServing();
}

TEST_F(ServiceInputTest, ABadBlockRefusesTheWholeBatch) {
  v1::PutRequest req;
  *req.add_blocks() = Block(4 << 10, 1);
  *req.add_blocks() = Block(4 << 10, 2);
  req.mutable_blocks(1)->set_head_dim(3);
  absl::Status s = a_->Put(req).status();
  EXPECT_THAT(s.message(), HasSubstr("blocks[1]"));
  int misses = 0;
  std::vector<BlockKey> first = {BlockKey::FromProto(req.blocks(0).key())};
  ASSERT_TRUE(a_->Get(first, [&](v1::GetResponse& r) { misses += r.error_code() != 0; }).ok());
  EXPECT_EQ(misses, 1) << "nothing of a refused batch is stored";
}

TEST_F(ServiceInputTest, MessageOverTheLimitIsResourceExhausted) {
  v1::PutRequest req;
  for (int i = 0; i < 6; ++i) *req.add_blocks() = Block(900 << 10, i);  // ~5.4 MB > 4 MiB
  absl::Status s = a_->Put(req).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("larger than max"));
  ExpectStillServing();
}

TEST_F(ServiceInputTest, BadKeyStringsAreRefused) {
  v1::Block b = Block(4 << 10);
  b.mutable_key()->set_model("");
  EXPECT_THAT(PutOne(b).message(), HasSubstr("key.model is empty"));
  b = Block(4 << 10);
  b.clear_key();
  EXPECT_THAT(PutOne(b).message(), HasSubstr("has no key"));
  // Not UTF-8, not printable: a named error, on every call that takes keys.
  b = Block(4 << 10);
  b.mutable_key()->set_model("m\xff");
  EXPECT_THAT(PutOne(b).message(), HasSubstr("key.model has a byte 0xff outside printable ASCII"));
  BlockKey bad = BlockKey::FromProto(b.key());
  absl::Status g = a_->Get(std::vector<BlockKey>{bad}, [](v1::GetResponse&) {});
  EXPECT_EQ(g.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(g.message(), HasSubstr("keys[0]: key.model has a byte 0xff"));
  v1::LookupRequest lookup;
  lookup.set_tenant("a");
  lookup.set_model("m");
  EXPECT_THAT(a_->Lookup(lookup).status().message(), HasSubstr("layers is empty"));
}

TEST_F(ServiceInputTest, BadLeaseIsRefused) {
  v1::Block b = Block(4 << 10);
  ASSERT_TRUE(PutOne(b).ok());
  std::vector<BlockKey> keys = {BlockKey::FromProto(b.key())};
  EXPECT_THAT(a_->Pin(keys, 0).status().message(), HasSubstr("lease_ms is 0"));
  EXPECT_THAT(a_->Pin(keys, 10'000'000).status().message(), HasSubstr("max_lease_ms"));
  EXPECT_EQ(a_->Unpin(12345).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ServiceInputTest, GarbageBytesOnTheSocketCostNobodyElseAnything) {
  for (int round = 0; round < 20; ++round) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(server_->port());
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    std::string junk;
    if (round % 2 == 0) {
      junk = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    } else {
      // A valid HTTP/2 preface followed by random frames.
      junk = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
      uint64_t x = round * 0x9e3779b97f4a7c15ULL + 1;
      for (int i = 0; i < 4096; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        junk.push_back(static_cast<char>(x));
      }
    }
    (void)!write(fd, junk.data(), junk.size());
    close(fd);
  }
  ExpectStillServing();
  auto h = a_->Healthy();
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(*h);
}

// Sends `payload` as the raw request of `method` and returns the call's status.
grpc::Status RawCall(CacheClient& c, const std::string& method, const std::string& payload) {
  grpc::ClientContext ctx;
  c.PrepareContext(&ctx);
  grpc::GenericStub generic(c.channel());
  grpc::Slice slice(payload);
  grpc::ByteBuffer req(&slice, 1);
  grpc::ByteBuffer resp;
  grpc::Status status;
  absl::Notification done;
  generic.UnaryCall(&ctx, method, grpc::StubOptions(), &req, &resp, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return status;
}

TEST_F(ServiceInputTest, MalformedPutRequestsAreInvalidArgument) {
  // Truncated, a length that claims 4 GiB, and a block field with no bytes behind it.
  for (const std::string& junk : {std::string("\x0a\xff\xff", 3), std::string("\x0a\xff\xff\xff\xff\x0f", 6),
                                  std::string("\x0a\x10", 2), std::string("\xff\xff\xff\xff\x0f", 5)}) {
    grpc::Status s = RawCall(*a_, "/kvcache.v1.KVCache/Put", junk);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(s.error_message(), HasSubstr("does not parse"));
  }
  // A block whose bytes are not a Block.
  grpc::Status s = RawCall(*a_, "/kvcache.v1.KVCache/Put", std::string("\x0a\x03\xff\xff\xff", 5));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("blocks[0]"));
  ExpectStillServing();
}

TEST_F(ServiceInputTest, UnparseableGetRequestIsInvalidArgument) {
  // A raw call carrying bytes that are not a GetRequest.
  grpc::ClientContext ctx;
  a_->PrepareContext(&ctx);
  grpc::GenericStub generic(a_->channel());
  grpc::Slice junk(std::string("\xff\xff\xff\xff\x0f", 5));
  grpc::ByteBuffer req(&junk, 1);
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(&ctx, "/kvcache.v1.KVCache/Get", &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  ASSERT_TRUE(cq.Next(&tag, &ok));
  call->Write(req, reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  call->WritesDone(reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::ByteBuffer resp;
  call->Read(&resp, reinterpret_cast<void*>(4));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("does not parse"));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  ExpectStillServing();
}

}  // namespace
}  // namespace kvc
