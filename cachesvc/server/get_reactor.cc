// The Get stream: one GetResponse per requested key, in order.
//
// The method is registered raw (ByteBuffer in and out). A hit is written as
// the GetResponse wire format by hand: a few header bytes (index, tier, the
// length of field `block`) followed by the block's stored wire bytes, which
// are handed to gRPC as a slice that references the cached block, so a 2 MiB
// block is never parsed or copied in user space on the way out. Misses and
// errors are ordinary serialized messages.
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <optional>

#include "absl/strings/str_cat.h"
#include "cachesvc/server/service.h"
#include "cachesvc/wire_util.h"
#include "common/logging.h"

namespace kvc {
namespace {

namespace v1 = ::kvcache::v1;

void ReleaseBlockRef(void* p) { delete static_cast<BlockPtr*>(p); }

// GetResponse{index, tier, block=<wire>} without copying `wire`.
grpc::ByteBuffer EncodeHit(uint32_t index, Tier tier, const BlockPtr& block) {
  std::string header;
  header.reserve(24);
  header.push_back(0x08);  // field 1 (index), varint
  AppendVarint(index, &header);
  header.push_back(0x10);  // field 2 (tier), varint
  AppendVarint(tier == Tier::kHost ? v1::TIER_HOST : v1::TIER_DISK, &header);
  header.push_back(0x1a);  // field 3 (block), length-delimited
  AppendVarint(block->wire().size(), &header);
  auto* ref = new BlockPtr(block);
  grpc::Slice slices[2] = {
      grpc::Slice(header),
      grpc::Slice(const_cast<char*>(block->wire().data()), block->wire().size(), &ReleaseBlockRef, ref)};
  return grpc::ByteBuffer(slices, 2);
}

grpc::ByteBuffer EncodeMessage(const v1::GetResponse& msg) {
  grpc::ByteBuffer out;
  bool own = false;
  (void)grpc::SerializationTraits<v1::GetResponse>::Serialize(msg, &out, &own);
  return out;
}

class GetReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  GetReactor(CacheService* svc, grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* raw)
      : svc_(svc), start_(absl::Now()) {
    svc_->CallStarted();
    absl::Status s = svc_->draining() ? absl::UnavailableError("server is shutting down") : Begin(ctx, raw);
    if (!s.ok()) {
      Done(s);
      return;
    }
    FetchNext();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Done(absl::CancelledError("client went away during the Get stream"));
      return;
    }
    ++next_;
    FetchNext();
  }

  void OnDone() override {
    svc_->metrics()->ObserveRequest(Method::kGet, status_.error_code(), absl::Now() - start_);
    CacheService* svc = svc_;
    delete this;
    svc->CallEnded();
  }

 private:
  absl::Status Begin(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* raw) {
    absl::StatusOr<Caller> caller = svc_->Authenticate(ctx);
    if (!caller.ok()) return caller.status();
    grpc::ByteBuffer copy(*raw);  // shares the slices; Deserialize consumes its argument
    grpc::Status ps = grpc::SerializationTraits<v1::GetRequest>::Deserialize(&copy, &request_);
    if (!ps.ok()) return absl::InvalidArgumentError("GetRequest does not parse");
    if (absl::Status s = svc_->CheckBatch(request_.keys_size(), "Get keys"); !s.ok()) return s;
    for (int i = 0; i < request_.keys_size(); ++i) {
      absl::Status s = svc_->CheckKey(*caller, request_.keys(i), absl::StrCat("keys[", i, "]"));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // Writes the response for keys[next_]. A host-memory hit is served on the
  // calling thread (a hash lookup under a shard lock); anything that may
  // touch disk goes to the executor, so a reactor thread never waits on I/O.
  void FetchNext() {
    if (next_ == static_cast<uint32_t>(request_.keys_size())) {
      Done(absl::OkStatus());
      return;
    }
    BlockKey key = BlockKey::FromProto(request_.keys(next_));
    if (std::optional<FoundBlock> hot = svc_->store()->GetFromMemory(key)) {
      Respond(next_, key, *std::move(hot));
      return;
    }
    const bool queued = svc_->executor()->TrySubmit([this, key = std::move(key)] {
      Respond(next_, key, svc_->store()->GetAfterMemoryMiss(key));
    });
    if (!queued) Done(absl::ResourceExhaustedError("server busy: request queue is full (max_queued_requests)"));
  }

  void Respond(uint32_t i, const BlockKey& key, absl::StatusOr<FoundBlock> found) {
    if (found.ok()) {
      svc_->metrics()->CountGet(found->tier == Tier::kHost ? GetResult::kHost : GetResult::kDisk);
      svc_->metrics()->CountBytesOut(found->block->wire().size());
      buffer_ = EncodeHit(i, found->tier, found->block);
    } else {
      const bool corrupt = found.status().code() == absl::StatusCode::kDataLoss;
      svc_->metrics()->CountGet(corrupt ? GetResult::kCorrupt : GetResult::kMiss);
      if (corrupt) {
        KVC_LOG(kWarning, "corrupt_block_dropped")
            .With("key", key.DebugString())
            .With("error", found.status().ToString());
      }
      v1::GetResponse miss;
      miss.set_index(i);
      miss.set_tier(v1::TIER_NONE);
      miss.set_error_code(static_cast<int>(found.status().code()));
      miss.set_error_message(std::string(found.status().message()));
      buffer_ = EncodeMessage(miss);
    }
    StartWrite(&buffer_);
  }

  void Done(const absl::Status& s) {
    status_ = ToGrpc(s);
    Finish(status_);
  }

  CacheService* const svc_;
  const absl::Time start_;
  v1::GetRequest request_;
  uint32_t next_ = 0;
  grpc::ByteBuffer buffer_;
  grpc::Status status_;
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* CacheService::Get(grpc::CallbackServerContext* ctx,
                                                              const grpc::ByteBuffer* req) {
  return new GetReactor(this, ctx, req);
}

}  // namespace kvc
