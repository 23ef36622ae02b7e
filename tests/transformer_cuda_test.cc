// The CUDA model runtime against the CPU one: the same checkpoint through
// Transformer with a kCuda context (weights and activations in device
// memory, the dense layers on the GPU) and with the CPU context, with full
// attention on the device (cache::DeviceFullAttention) and with a host
// policy (the runtime stages q, k, v through host memory), on random models
// of two shapes and on stories15M. Without a CUDA device these skip, saying
// why; that the runtime refuses cleanly there is tested unconditionally.
//
// Tolerance: 1e-4 by norm over the logits. Both sides compute in fp32 but
// sum in different orders (GPU GEMM tiles and flash-attention tiles against
// the CPU's), ~1e-6 relative per layer; a wrong index, pointer or staging
// copy is off by O(1).
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/device.h"
#include "tests/kernel_test_util.h"
#include "tests/model_test_util.h"
#include "worker/cache/device_full_attention.h"
#include "worker/cache/full_attention.h"
#include "worker/cache/policy_factory.h"
#include "worker/model/checkpoint.h"
#include "worker/model/transformer.h"

namespace kvc::model {
namespace {

using kernels::testing::RelErrorByNorm;

using testing::ModelShape;

using testing::RandomTokens;

TransformerOptions Cuda() {
  TransformerOptions o;
  o.ctx.backend = kernels::Backend::kCuda;
  return o;
}

// Prefill of `prompt` tokens (all logits) then one-token decode steps, each
// step's logits appended.
std::vector<float> RunModel(Transformer& model, AttentionCache& cache, const std::vector<int32_t>& tokens,
                       int64_t prompt) {
  const int32_t vocab = model.config().vocab_size;
  std::vector<float> all(static_cast<size_t>(prompt) * vocab), logits(vocab);
  absl::Status s = model.Forward(absl::MakeConstSpan(tokens).first(prompt), 0, cache, all.data(), true);
  EXPECT_TRUE(s.ok()) << s;
  for (size_t t = prompt; t < tokens.size(); ++t) {
    s = model.Forward(absl::MakeConstSpan(&tokens[t], 1), t, cache, logits.data());
    EXPECT_TRUE(s.ok()) << s;
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

TEST(TransformerCudaTest, RefusedCleanlyWithoutADevice) {
  if (kernels::CudaAvailable().ok()) GTEST_SKIP() << "a CUDA device is present";
  auto ckpt = *Checkpoint::Random(ModelShape(32, 48, 1, 2, 1, 20), 1, 0.2f);
  auto t = Transformer::Create(ckpt.get(), Cuda());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnavailable) << t.status();
  auto cache = cache::DeviceFullAttention::Create(ckpt->config(), 16);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kUnavailable) << cache.status();
}

TEST(TransformerCudaTest, AgreesWithTheCpuOnRandomModels) {
  if (auto s = kernels::CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  for (const ModelConfig& c : {ModelShape(64, 96, 2, 4, 2, 50), ModelShape(96, 160, 3, 6, 2, 70)}) {
    SCOPED_TRACE(::testing::Message() << "dim " << c.dim << " heads " << c.n_heads << "/" << c.n_kv_heads);
    auto ckpt = *Checkpoint::Random(c, 7, 0.2f);
    TransformerOptions cpu_options;
    cpu_options.max_chunk = 16;
    TransformerOptions cuda_options = Cuda();
    cuda_options.max_chunk = 16;
    auto cpu = *Transformer::Create(ckpt.get(), cpu_options);
    auto gpu_or = Transformer::Create(ckpt.get(), cuda_options);
    ASSERT_TRUE(gpu_or.ok()) << gpu_or.status();
    auto gpu = std::move(*gpu_or);
    const std::vector<int32_t> tokens = RandomTokens(60, c.vocab_size, 3);

    cache::FullAttention host_full(c, kernels::DType::kF32);
    const std::vector<float> want = RunModel(*cpu, host_full, tokens, 40);
    auto device_full = *cache::DeviceFullAttention::Create(c, 64);
    EXPECT_LT(RelErrorByNorm(RunModel(*gpu, *device_full, tokens, 40), want), 1e-4);
    // A host policy on the CUDA runtime: staged through host memory.
    cache::FullAttention staged(c, kernels::DType::kF32);
    EXPECT_LT(RelErrorByNorm(RunModel(*gpu, staged, tokens, 40), want), 1e-4);
    auto cpu_cascading = *cache::MakePolicy(c, "cascading:sinks=2,subcaches=2,window=16");
    auto gpu_cascading = *cache::MakePolicy(c, "cascading:sinks=2,subcaches=2,window=16");
    EXPECT_LT(RelErrorByNorm(RunModel(*gpu, *gpu_cascading, tokens, 40), RunModel(*cpu, *cpu_cascading, tokens, 40)), 1e-4);
    EXPECT_EQ(device_full->stats().attended_total, host_full.stats().attended_total);
  }
}

TEST(TransformerCudaTest, BatchedDecodeMatchesSingleSequences) {
  if (auto s = kernels::CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  const ModelConfig c = ModelShape(64, 96, 2, 4, 2, 50);
  auto ckpt = *Checkpoint::Random(c, 8, 0.2f);
  auto gpu = *Transformer::Create(ckpt.get(), Cuda());
  const std::vector<int32_t> a = RandomTokens(12, c.vocab_size, 4), b = RandomTokens(7, c.vocab_size, 5);
  std::vector<float> logits(c.vocab_size), want_a(c.vocab_size), want_b(c.vocab_size);
  auto ca = *cache::DeviceFullAttention::Create(c, 32), cb = *cache::DeviceFullAttention::Create(c, 32);
  auto sa = *cache::DeviceFullAttention::Create(c, 32), sb = *cache::DeviceFullAttention::Create(c, 32);
  ASSERT_TRUE(gpu->Forward(absl::MakeConstSpan(a).first(11), 0, *ca, logits.data()).ok());
  ASSERT_TRUE(gpu->Forward(absl::MakeConstSpan(b).first(6), 0, *cb, logits.data()).ok());
  ASSERT_TRUE(gpu->Forward(a, 0, *sa, want_a.data()).ok());
  ASSERT_TRUE(gpu->Forward(b, 0, *sb, want_b.data()).ok());
  std::vector<float> batch(2 * c.vocab_size);
  AttentionCache* caches[] = {ca.get(), cb.get()};
  const int32_t tokens[] = {a[11], b[6]};
  const int64_t positions[] = {11, 6};
  ASSERT_TRUE(gpu->DecodeBatch(tokens, positions, caches, batch.data()).ok());
  EXPECT_LT(RelErrorByNorm(std::vector<float>(batch.begin(), batch.begin() + c.vocab_size), want_a), 1e-4);
  EXPECT_LT(RelErrorByNorm(std::vector<float>(batch.begin() + c.vocab_size, batch.end()), want_b), 1e-4);
}

TEST(TransformerCudaTest, AgreesWithTheCpuOnStories15M) {
  if (auto s = kernels::CudaAvailable(); !s.ok()) GTEST_SKIP() << s.message();
  auto ckpt_or = Checkpoint::Load(std::string(KVC_MODEL_DIR) + "/model.bin");
  if (!ckpt_or.ok()) GTEST_SKIP() << "stories15M not fetched (scripts/setup.sh): " << ckpt_or.status();
  auto ckpt = std::move(*ckpt_or);
  const ModelConfig& c = ckpt->config();
  auto cpu = *Transformer::Create(ckpt.get(), TransformerOptions{});
  auto gpu = *Transformer::Create(ckpt.get(), Cuda());
  const std::vector<int32_t> tokens = RandomTokens(200, c.vocab_size, 9);
  cache::FullAttention host_full(c, kernels::DType::kF32);
  auto device_full = *cache::DeviceFullAttention::Create(c, 256);
  EXPECT_LT(RelErrorByNorm(RunModel(*gpu, *device_full, tokens, 150), RunModel(*cpu, host_full, tokens, 150)), 1e-4);
}

}  // namespace
}  // namespace kvc::model
