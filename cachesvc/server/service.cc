#include "cachesvc/server/service.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cachesvc/cached_block.h"
#include "cachesvc/server/put_request.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace kvc {

namespace v1 = ::kvcache::v1;

absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

CacheService::CacheService(TieredStore* store, const TenantDirectory* tenants, const Limits& limits,
                           BoundedExecutor* executor, ServiceMetrics* metrics, Clock* clock)
    : store_(store), tenants_(tenants), limits_(limits), executor_(executor), metrics_(metrics), clock_(clock) {}

absl::StatusOr<Caller> CacheService::Authenticate(grpc::CallbackServerContext* ctx) const {
  absl::string_view auth;
  const auto& md = ctx->client_metadata();
  if (auto it = md.find("authorization"); it != md.end()) {
    auth = absl::string_view(it->second.data(), it->second.size());
  }
  return AuthenticateAuthorization(auth);
}

absl::StatusOr<Caller> CacheService::AuthenticateAuthorization(absl::string_view auth) const {
  // Hold the registry for the lookup; the caller keeps a copy of the name.
  std::shared_ptr<const TenantRegistry> registry = tenants_->Current();
  KVC_ASSIGN_OR_RETURN(const Tenant* t, registry->Authenticate(auth));
  if (t == nullptr) return Caller{"", true};
  return Caller{t->name, false};
}

absl::Status CacheService::CheckKey(const Caller& caller, const v1::BlockKey& key,
                                    absl::string_view what) const {
  if (absl::Status s = ValidateKey(key, limits_); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", s.message()));
  }
  if (!caller.any_tenant && key.tenant() != caller.tenant) {
    return absl::PermissionDeniedError(absl::StrCat(what, " belongs to tenant '", key.tenant(),
                                                    "'; this token is for tenant '", caller.tenant, "'"));
  }
  return absl::OkStatus();
}

absl::Status CacheService::CheckBatch(size_t n, absl::string_view what) const {
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  if (n > limits_.max_batch_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(what, " has ", n, " entries; limit max_batch_blocks is ",
                                                   limits_.max_batch_blocks));
  }
  return absl::OkStatus();
}

void CacheService::Finish(grpc::ServerUnaryReactor* reactor, Method method, absl::Time start,
                          const absl::Status& status) {
  const grpc::Status g = ToGrpc(status);
  metrics_->ObserveRequest(method, g.error_code(), absl::Now() - start);
  CallEnded();
  if (!status.ok() && status.code() != absl::StatusCode::kNotFound) {
    KVC_LOG(kDebug, "request_failed").With("method", MethodName(method)).With("error", status.ToString());
  }
  reactor->Finish(g);
}

template <typename Work>
grpc::ServerUnaryReactor* CacheService::Unary(Method method, grpc::CallbackServerContext* ctx,
                                              bool inline_work, Work work) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const absl::Time start = absl::Now();
  CallStarted();
  if (draining()) {
    Finish(reactor, method, start, absl::UnavailableError("server is shutting down"));
    return reactor;
  }
  absl::StatusOr<Caller> caller = Authenticate(ctx);
  if (!caller.ok()) {
    Finish(reactor, method, start, caller.status());
    return reactor;
  }
  if (inline_work) {
    Finish(reactor, method, start, work(*caller));
    return reactor;
  }
  const bool queued = executor_->TrySubmit(
      [this, reactor, method, start, caller = *std::move(caller), work = std::move(work)]() mutable {
        Finish(reactor, method, start, work(caller));
      });
  if (!queued) {
    Finish(reactor, method, start,
           absl::ResourceExhaustedError("server busy: request queue is full (max_queued_requests)"));
  }
  return reactor;
}

// --- Put --------------------------------------------------------------------

grpc::ServerUnaryReactor* CacheService::Put(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                            grpc::ByteBuffer* resp) {
  return Unary(Method::kPut, ctx, false,
               [this, req, resp](const Caller& c) { return DoPut(c, *req, resp); });
}

absl::Status CacheService::DoPut(const Caller& caller, const grpc::ByteBuffer& raw, grpc::ByteBuffer* resp) {
  KVC_ASSIGN_OR_RETURN(RawPutRequest req, ReadPutRequest(raw, limits_));
  const bool write_through = req.write_through;
  KVC_ASSIGN_OR_RETURN(uint32_t stored, StoreBlocks(caller, std::move(req)));
  v1::PutResponse out;
  out.set_stored(stored);
  out.set_durable(write_through);
  bool own = false;
  return FromGrpcStatus(grpc::SerializationTraits<v1::PutResponse>::Serialize(out, resp, &own));
}

absl::StatusOr<uint32_t> CacheService::StoreBlocks(const Caller& caller, RawPutRequest req) {
  KVC_RETURN_IF_ERROR(CheckBatch(req.blocks.size(), "Put blocks"));
  std::vector<BlockPtr> blocks;
  blocks.reserve(req.blocks.size());
  uint64_t charge = 0, payload = 0;
  // Validate the whole batch before storing any of it.
  for (size_t i = 0; i < req.blocks.size(); ++i) {
    absl::StatusOr<BlockPtr> b = CachedBlock::FromRequest(std::move(req.blocks[i]), limits_);
    if (!b.ok()) return absl::Status(b.status().code(), absl::StrCat("blocks[", i, "]: ", b.status().message()));
    const std::string& tenant = (*b)->key().tenant;
    if (!caller.any_tenant && tenant != caller.tenant) {
      return absl::PermissionDeniedError(absl::StrCat("blocks[", i, "] belongs to tenant '", tenant,
                                                      "'; this token is for tenant '", caller.tenant, "'"));
    }
    charge += (*b)->charge();
    payload += (*b)->wire().size();
    blocks.push_back(*std::move(b));
  }
  if (!caller.any_tenant) {
    const uint64_t quota = tenants_->QuotaFor(caller.tenant);
    if (quota != 0 && charge > quota) {
      return absl::ResourceExhaustedError(absl::StrCat("batch charges ", charge, " bytes; tenant '",
                                                       caller.tenant, "' quota is ", quota, " bytes"));
    }
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    absl::Status s = store_->Put(blocks[i], req.write_through);
    if (!s.ok()) {
      // Blocks before i are stored; the caller retries the batch (puts are idempotent).
      return absl::Status(s.code(), absl::StrCat("blocks[", i, "]: ", s.message()));
    }
  }
  metrics_->CountPut(blocks.size(), payload);
  return static_cast<uint32_t>(blocks.size());
}

// --- Lookup -----------------------------------------------------------------

grpc::ServerUnaryReactor* CacheService::Lookup(grpc::CallbackServerContext* ctx, const v1::LookupRequest* req,
                                               v1::LookupResponse* resp) {
  return Unary(Method::kLookup, ctx, false,
               [this, req, resp](const Caller& c) { return DoLookup(c, *req, resp); });
}

absl::Status CacheService::DoLookup(const Caller& caller, const v1::LookupRequest& req,
                                    v1::LookupResponse* resp) {
  v1::BlockKey probe;
  probe.set_tenant(req.tenant());
  probe.set_model(req.model());
  KVC_RETURN_IF_ERROR(CheckKey(caller, probe, "Lookup"));
  if (req.layers_size() == 0) return absl::InvalidArgumentError("Lookup layers is empty");
  if (static_cast<uint32_t>(req.layers_size()) > limits_.max_lookup_layers) {
    return absl::InvalidArgumentError(absl::StrCat("Lookup has ", req.layers_size(),
                                                   " layers; limit max_lookup_layers is ",
                                                   limits_.max_lookup_layers));
  }
  if (static_cast<uint32_t>(req.hashes_size()) > limits_.max_lookup_hashes) {
    return absl::InvalidArgumentError(absl::StrCat("Lookup has ", req.hashes_size(),
                                                   " hashes; limit max_lookup_hashes is ",
                                                   limits_.max_lookup_hashes));
  }
  BlockKey key;
  key.tenant = req.tenant();
  key.model = req.model();
  uint32_t cached = 0;
  for (const v1::Hash128& h : req.hashes()) {
    key.hash = Hash128{h.hi(), h.lo()};
    Tier slowest = Tier::kHost;
    for (uint32_t layer : req.layers()) {
      key.layer = layer;
      const Tier t = store_->Locate(key);
      if (t == Tier::kNone) {
        slowest = Tier::kNone;
        break;
      }
      slowest = std::max(slowest, t);
    }
    if (slowest == Tier::kNone) break;
    resp->add_tiers(slowest == Tier::kHost ? v1::TIER_HOST : v1::TIER_DISK);
    ++cached;
  }
  resp->set_cached_blocks(cached);
  return absl::OkStatus();
}

// --- Delete -----------------------------------------------------------------

grpc::ServerUnaryReactor* CacheService::Delete(grpc::CallbackServerContext* ctx, const v1::DeleteRequest* req,
                                               v1::DeleteResponse* resp) {
  return Unary(Method::kDelete, ctx, false, [this, req, resp](const Caller& c) -> absl::Status {
    KVC_RETURN_IF_ERROR(CheckBatch(req->keys_size(), "Delete keys"));
    for (int i = 0; i < req->keys_size(); ++i) {
      KVC_RETURN_IF_ERROR(CheckKey(c, req->keys(i), absl::StrCat("keys[", i, "]")));
    }
    uint32_t deleted = 0;
    for (const v1::BlockKey& k : req->keys()) {
      KVC_ASSIGN_OR_RETURN(bool was, store_->Erase(BlockKey::FromProto(k)));
      deleted += was ? 1 : 0;
    }
    resp->set_deleted(deleted);
    return absl::OkStatus();
  });
}

// --- Pin / Unpin ------------------------------------------------------------

grpc::ServerUnaryReactor* CacheService::Pin(grpc::CallbackServerContext* ctx, const v1::PinRequest* req,
                                            v1::PinResponse* resp) {
  return Unary(Method::kPin, ctx, false,
               [this, req, resp](const Caller& c) { return DoPin(c, *req, resp); });
}

absl::Status CacheService::DoPin(const Caller& caller, const v1::PinRequest& req, v1::PinResponse* resp) {
  KVC_RETURN_IF_ERROR(CheckBatch(req.keys_size(), "Pin keys"));
  if (req.lease_ms() == 0 || req.lease_ms() > limits_.max_lease_ms) {
    return absl::InvalidArgumentError(absl::StrCat("lease_ms is ", req.lease_ms(),
                                                   "; it must be in [1, max_lease_ms=",
                                                   limits_.max_lease_ms, "]"));
  }
  std::vector<BlockKey> keys;
  keys.reserve(req.keys_size());
  for (int i = 0; i < req.keys_size(); ++i) {
    KVC_RETURN_IF_ERROR(CheckKey(caller, req.keys(i), absl::StrCat("keys[", i, "]")));
    keys.push_back(BlockKey::FromProto(req.keys(i)));
  }
  KVC_ASSIGN_OR_RETURN(PinGrant grant, store_->Pin(keys, absl::Milliseconds(req.lease_ms())));
  {
    absl::MutexLock lock(&leases_mu_);
    if (lease_owner_.size() >= lease_sweep_at_) {
      const absl::Time now = clock_->Now();
      absl::erase_if(lease_owner_, [now](const auto& kv) { return kv.second.expiry <= now; });
      lease_sweep_at_ = std::max<size_t>(1024, 2 * lease_owner_.size());
    }
    lease_owner_[grant.lease_id] = LeaseOwner{caller.tenant, grant.expiry};
  }
  resp->set_lease_id(grant.lease_id);
  resp->set_expires_unix_ms(absl::ToUnixMillis(grant.expiry));
  resp->set_pinned(static_cast<uint32_t>(keys.size()));
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* CacheService::Unpin(grpc::CallbackServerContext* ctx, const v1::UnpinRequest* req,
                                              v1::UnpinResponse* resp) {
  return Unary(Method::kUnpin, ctx, true,
               [this, req, resp](const Caller& c) { return DoUnpin(c, *req, resp); });
}

absl::Status CacheService::DoUnpin(const Caller& caller, const v1::UnpinRequest& req, v1::UnpinResponse* resp) {
  const std::string unknown = absl::StrCat("lease ", req.lease_id(), " is unknown, released or expired");
  {
    absl::MutexLock lock(&leases_mu_);
    auto it = lease_owner_.find(req.lease_id());
    // Another tenant's lease reads as unknown: lease ids leak nothing.
    if (it == lease_owner_.end() || (!caller.any_tenant && it->second.tenant != caller.tenant)) {
      return absl::NotFoundError(unknown);
    }
    lease_owner_.erase(it);
  }
  absl::StatusOr<size_t> n = store_->Unpin(req.lease_id());
  if (!n.ok()) return absl::NotFoundError(unknown);
  resp->set_released(static_cast<uint32_t>(*n));
  return absl::OkStatus();
}

// --- Stats / Info -----------------------------------------------------------

namespace {
void FillTier(const TierUsage& u, v1::TierStats* t) {
  t->set_bytes(u.bytes);
  t->set_budget_bytes(u.budget_bytes);
  t->set_blocks(u.blocks);
  t->set_hits(u.hits);
  t->set_misses(u.misses);
  t->set_evictions(u.evictions);
}
}  // namespace

grpc::ServerUnaryReactor* CacheService::Stats(grpc::CallbackServerContext* ctx, const v1::StatsRequest* req,
                                              v1::StatsResponse* resp) {
  return Unary(Method::kStats, ctx, true, [this, resp](const Caller& c) {
    const StoreStats s = store_->Stats();
    FillTier(s.host, resp->mutable_host());
    FillTier(s.disk, resp->mutable_disk());
    resp->set_corrupt_blocks_dropped(s.host.corrupt + s.disk.corrupt);
    resp->set_pinned_blocks(s.pinned_blocks);
    if (!c.any_tenant) {
      resp->set_tenant(c.tenant);
      resp->set_tenant_host_bytes(store_->TenantHostBytes(c.tenant));
      resp->set_tenant_disk_bytes(store_->TenantDiskBytes(c.tenant));
      resp->set_tenant_quota_bytes(tenants_->QuotaFor(c.tenant));
    }
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CacheService::Info(grpc::CallbackServerContext* ctx, const v1::InfoRequest* req,
                                             v1::InfoResponse* resp) {
  return Unary(Method::kInfo, ctx, true, [this, resp](const Caller&) {
    resp->set_version(KVC_VERSION);
    limits_.ToProto(resp->mutable_limits());
    return absl::OkStatus();
  });
}

}  // namespace kvc
