// kvc-worker serve's gRPC service (worker/serve/worker_service.h) on the real
// stories15M model, against a real kvcached child: the text equals one
// sequence run directly; a repeated prompt loads its prefix and gives the
// same text; bad input is refused naming the field; a full queue refuses at
// once; a caller that goes away frees the model; health follows shutdown.
#include "worker/serve/worker_service.h"

#include <thread>

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "kvcache/v1/worker.grpc.pb.h"
#include "tests/kvcached_child.h"
#include "tests/server_fixture.h"
#include "tests/temp_dir.h"
#include "worker/cache/policy_factory.h"
#include "worker/model/checkpoint.h"
#include "worker/serve/sequence.h"

namespace kvc::serve {
namespace {

namespace v1 = ::kvcache::v1;
using ::testing::HasSubstr;

constexpr char kPrompt[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. "
    "One day, she saw a big red ball under a tree. She ran to the ball and picked it up. It was shiny and new. Lily "
    "wanted to share the ball with her friends, so she called them over.";

struct Reply {
  grpc::Status status;
  std::string text;
  v1::GenerateDone done;
  int responses = 0;
};

class WorkerServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ckpt_ = model::Checkpoint::Load(absl::StrCat(KVC_MODEL_DIR, "/model.bin")).value_or(nullptr);
    auto tok = model::Tokenizer::Load(absl::StrCat(KVC_MODEL_DIR, "/tokenizer.bin"), 32000);
    if (tok.ok()) tokenizer_ = new model::Tokenizer(*std::move(tok));
  }

  void SetUp() override {
    ASSERT_NE(ckpt_, nullptr) << "the stories15M files come from scripts/setup.sh";
    ASSERT_NE(tokenizer_, nullptr);
    model::TransformerOptions o;
    o.max_chunk = 32;
    model_ = *model::Transformer::Create(ckpt_.get(), o);
    kvcached_ = std::make_unique<testing::KvcachedChild>(dir_.path(), testing::KvcachedChildOptions{});
    ASSERT_GT(kvcached_->port(), 0) << "kvcached did not start";
    ServiceLinkOptions lo;
    lo.client.transport = "grpc";
    lo.client.grpc.address = kvcached_->address();
    lo.client.grpc.token = testing::kTokenA;
    lo.client.grpc.timeout = absl::Seconds(5);
    lo.sync.tenant = "a";
    lo.sync.model = "stories15M";
    lo.sync.block_tokens = 16;
    link_ = *ServiceLink::Start(lo);
  }

  void Start(WorkerServiceOptions o = {}) {
    o.listen_address = "127.0.0.1:0";
    o.prefix_align = 32;  // the model's max_chunk: a loaded prefix gives the logits of computing it
    auto s = WorkerServer::Start(o, model_.get(), tokenizer_, link_.get(), &registry_);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = *std::move(s);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", server_->port()), grpc::InsecureChannelCredentials());
    stub_ = v1::Worker::NewStub(channel_);
  }

  static v1::GenerateRequest Request(int max_tokens, bool wait = true) {
    v1::GenerateRequest r;
    r.set_prompt(kPrompt);
    r.set_max_tokens(max_tokens);
    r.set_wait_for_write_through(wait);
    return r;
  }

  Reply Call(const v1::GenerateRequest& req, grpc::ClientContext* ctx = nullptr) {
    grpc::ClientContext own;
    if (ctx == nullptr) ctx = &own;
    Reply out;
    auto reader = stub_->Generate(ctx, req);
    v1::GenerateResponse r;
    while (reader->Read(&r)) {
      ++out.responses;
      out.text += r.text();
      if (r.has_done()) out.done = r.done();
    }
    out.status = reader->Finish();
    return out;
  }

  // The text of the same request run directly, no service, no server.
  std::string Direct(int max_tokens) {
    SequenceParams p;
    p.prompt = tokenizer_->Encode(kPrompt, true, false);
    p.max_tokens = max_tokens;
    std::string text;
    auto make = [&] { return cache::MakePolicy(model_->config(), "full"); };
    auto res = RunSequence(*model_, nullptr, make, p, [&](int32_t prev, int32_t t) {
      text += tokenizer_->Decode(prev, t);
      return true;
    });
    EXPECT_TRUE(res.ok()) << res.status();
    return text;
  }

  double Metric(const std::string& name, const std::string& label_value = "") {
    for (const auto& f : registry_.Collect()) {
      if (f.name != name) continue;
      for (const auto& m : f.metric) {
        if (!label_value.empty() && (m.label.empty() || m.label[0].value != label_value)) continue;
        return f.type == prometheus::MetricType::Gauge ? m.gauge.value : m.counter.value;
      }
    }
    return -1;
  }

  static inline std::unique_ptr<model::Checkpoint> ckpt_;
  static inline model::Tokenizer* tokenizer_ = nullptr;
  testing::TempDir dir_;
  std::unique_ptr<model::Transformer> model_;
  std::unique_ptr<testing::KvcachedChild> kvcached_;
  std::unique_ptr<ServiceLink> link_;
  prometheus::Registry registry_;
  std::unique_ptr<WorkerServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Worker::Stub> stub_;
};

TEST_F(WorkerServiceTest, TextEqualsADirectRunAndARepeatedPromptLoadsItsPrefix) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string direct = Direct(24);
  Reply first = Call(Request(24));
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.text, direct);
  EXPECT_EQ(first.done.generated_tokens(), 24);
  EXPECT_EQ(first.done.finish_reason(), "length");
  EXPECT_EQ(first.responses, 25);  // one per token, then the last
  EXPECT_EQ(first.done.prefix_tokens_loaded(), 0);
  EXPECT_GT(first.done.blocks_written(), 0);
  EXPECT_FALSE(first.done.degraded());

  Reply second = Call(Request(24));
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_GE(second.done.prefix_tokens_loaded(), 32);
  EXPECT_EQ(second.done.prefix_tokens_loaded() % 32, 0);
  EXPECT_EQ(second.text, direct) << "a loaded prefix must give the text of computing it";
  EXPECT_EQ(Metric("kvc_worker_requests_total", "OK"), 2);
  EXPECT_EQ(Metric("kvc_worker_generated_tokens_total"), 48);
  EXPECT_EQ(Metric("kvc_worker_prompt_tokens_total", "loaded"), second.done.prefix_tokens_loaded());
}

TEST_F(WorkerServiceTest, BadInputIsRefusedNamingTheFieldAndCostsNothing) {
  WorkerServiceOptions o;
  o.max_tokens_limit = 64;
  o.default_max_tokens = 16;
  o.max_prompt_bytes = 1000;
  ASSERT_NO_FATAL_FAILURE(Start(o));
  auto expect_invalid = [&](v1::GenerateRequest r, const std::string& field) {
    Reply rep = Call(r);
    EXPECT_EQ(rep.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_THAT(rep.status.error_message(), HasSubstr(field));
    EXPECT_EQ(rep.responses, 0);
  };
  v1::GenerateRequest r = Request(8, false);
  r.clear_prompt();
  expect_invalid(r, "prompt");
  r = Request(8, false);
  r.set_prompt(std::string(1001, 'a'));
  expect_invalid(r, "max_prompt_bytes");
  expect_invalid(Request(65, false), "max_tokens");
  expect_invalid(Request(-1, false), "max_tokens");
  r = Request(8, false);
  r.set_top_p(1.5f);
  expect_invalid(r, "top_p");
  r = Request(8, false);
  r.set_temperature(-1);
  expect_invalid(r, "temperature");
  // The worker is none the worse.
  Reply ok = Call(Request(4, false));
  EXPECT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.done.generated_tokens(), 4);
  EXPECT_EQ(Metric("kvc_worker_requests_total", "INVALID_ARGUMENT"), 6);
  EXPECT_FALSE(WorkerServer::Start(WorkerServiceOptions{.policy = "nonsense"}, model_.get(), tokenizer_, nullptr,
                                   nullptr)
                   .ok());
}

TEST_F(WorkerServiceTest, AFullQueueRefusesAtOnceAndACallerThatLeavesFreesTheModel) {
  WorkerServiceOptions o;
  o.max_queued = 0;  // the running request only
  ASSERT_NO_FATAL_FAILURE(Start(o));
  // A long request holds the model; it is cancelled after its first token.
  grpc::ClientContext long_ctx;
  auto reader = stub_->Generate(&long_ctx, Request(4000, false));
  v1::GenerateResponse r;
  ASSERT_TRUE(reader->Read(&r));
  const absl::Time t0 = absl::Now();
  Reply busy = Call(Request(4, false));
  EXPECT_EQ(busy.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << busy.status.error_message();
  EXPECT_THAT(busy.status.error_message(), HasSubstr("max_queued"));
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2));
  long_ctx.TryCancel();
  while (reader->Read(&r)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The model is free again (the cancelled sequence stopped at its next token).
  Reply after;
  for (int i = 0; i < 50; ++i) {
    after = Call(Request(4, false));
    if (after.status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
  EXPECT_EQ(Metric("kvc_worker_requests_running"), 0);
}

TEST_F(WorkerServiceTest, HealthIsServingUntilShutdownAndThenRequestsAreRefused) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::health::v1::HealthCheckRequest hr;
  grpc::health::v1::HealthCheckResponse hs;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(health->Check(&ctx, hr, &hs).ok());
    EXPECT_EQ(hs.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  }
  server_->Shutdown(absl::Seconds(2));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  EXPECT_FALSE(health->Check(&ctx, hr, &hs).ok() && hs.status() == grpc::health::v1::HealthCheckResponse::SERVING);
  grpc::ClientContext gctx;
  gctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  EXPECT_FALSE(Call(Request(4, false), &gctx).status.ok());
}

}  // namespace
}  // namespace kvc::serve
