// Settings, byte sizes and the tenant tokens file: bad input names what is wrong.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "cachesvc/server/auth.h"
#include "cachesvc/server/options.h"
#include "common/units.h"

namespace kvc {
namespace {

using ::testing::HasSubstr;

TEST(ByteSizeTest, ParsesUnits) {
  EXPECT_EQ(ParseByteSize("17").value(), 17u);
  EXPECT_EQ(ParseByteSize("512KiB").value(), 512u << 10);
  EXPECT_EQ(ParseByteSize("64 MiB").value(), 64u << 20);
  EXPECT_EQ(ParseByteSize("8gib").value(), 8ull << 30);
  EXPECT_EQ(ParseByteSize("1GB").value(), 1000000000u);
  EXPECT_THAT(ParseByteSize("lots").status().message(), HasSubstr("'lots' is not a byte size"));
  EXPECT_THAT(ParseByteSize("5 parsecs").status().message(), HasSubstr("unknown unit"));
  EXPECT_THAT(ParseByteSize("99999999999TiB").status().message(), HasSubstr("overflows"));
  EXPECT_EQ(FormatBytes(3ull << 29), "1.50 GiB");
}

TEST(OptionsTest, DefaultsAreValid) { EXPECT_TRUE(ServerOptions().Validate().ok()); }

TEST(OptionsTest, YamlOverlaysDefaults) {
  ServerOptions o;
  ASSERT_TRUE(ApplyYamlText("host_capacity_bytes: 2GiB\nhost_shards: 8\nshutdown_grace: 3s\n"
                            "log_level: debug\nlimits:\n  max_batch_blocks: 64\n  max_block_bytes: 4MiB\n",
                            &o)
                  .ok());
  EXPECT_EQ(o.host_capacity_bytes, 2ull << 30);
  EXPECT_EQ(o.host_shards, 8u);
  EXPECT_EQ(o.shutdown_grace, absl::Seconds(3));
  EXPECT_EQ(o.log_level, LogLevel::kDebug);
  EXPECT_EQ(o.limits.max_batch_blocks, 64u);
  EXPECT_EQ(o.limits.max_block_bytes, 4u << 20);
  EXPECT_EQ(o.data_dir, ServerOptions().data_dir) << "untouched keys keep their defaults";
  EXPECT_TRUE(o.Validate().ok());
  ASSERT_TRUE(ApplyYamlText("ucx_recv_pool_bytes: 64MiB\nucx_progress_spin: 50us\n", &o).ok());
  EXPECT_EQ(o.ucx_recv_pool_bytes, 64ull << 20);
  EXPECT_EQ(o.ucx_progress_spin, absl::Microseconds(50));
  EXPECT_TRUE(o.Validate().ok());
}

TEST(OptionsTest, BadYamlNamesTheKey) {
  ServerOptions o;
  EXPECT_THAT(ApplyYamlText("host_capacity: 1GiB\n", &o).message(), HasSubstr("unknown config key 'host_capacity'"));
  EXPECT_THAT(ApplyYamlText("limits:\n  max_blocks: 3\n", &o).message(), HasSubstr("'limits.max_blocks'"));
  EXPECT_THAT(ApplyYamlText("host_shards: many\n", &o).message(), HasSubstr("'host_shards': 'many' is not an integer"));
  EXPECT_THAT(ApplyYamlText("shutdown_grace: soon\n", &o).message(), HasSubstr("not a duration"));
  EXPECT_THAT(ApplyYamlText("[1, 2", &o).message(), HasSubstr("not valid YAML"));
  EXPECT_EQ(ApplyYamlFile("/nonexistent/kvcached.yaml", &o).code(), absl::StatusCode::kNotFound);
}

TEST(OptionsTest, ValidateNamesTheSetting) {
  ServerOptions o;
  o.host_shards = 6;
  EXPECT_THAT(o.Validate().message(), HasSubstr("host_shards: 6 is not a power of two"));
  o = ServerOptions();
  o.tls_cert_file = "cert.pem";
  EXPECT_THAT(o.Validate().message(), HasSubstr("set both for TLS"));
  o = ServerOptions();
  o.limits.max_message_bytes = o.limits.max_block_bytes;
  EXPECT_THAT(o.Validate().message(), HasSubstr("max_message_bytes"));
  o = ServerOptions();
  o.listen_address = "50051";
  EXPECT_THAT(o.Validate().message(), HasSubstr("not host:port"));
  o = ServerOptions();
  o.ucx_progress_spin = absl::Seconds(2);
  EXPECT_THAT(o.Validate().message(), HasSubstr("ucx_progress_spin"));
  o = ServerOptions();
  o.ucx_recv_pool_bytes = 1000;
  EXPECT_THAT(o.Validate().message(), HasSubstr("ucx_recv_pool_bytes"));
}

TEST(TenantRegistryTest, ParsesTokensAndQuotas) {
  auto r = TenantRegistry::FromText("# comment\nacme 0123456789abcdef 2GiB\nlab fedcba9876543210  # no quota\n");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->size(), 2u);
  EXPECT_EQ((*r)->QuotaFor("acme"), 2ull << 30);
  EXPECT_EQ((*r)->QuotaFor("lab"), 0u);
  auto t = (*r)->Authenticate("Bearer fedcba9876543210");
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->name, "lab");
  EXPECT_EQ((*r)->Authenticate("").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*r)->Authenticate("Basic abc").status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*r)->Authenticate("Bearer fedcba9876543211").status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(TenantRegistryTest, BadFilesNameTheLine) {
  EXPECT_THAT(TenantRegistry::FromText("acme short\n").status().message(), HasSubstr("line 1: token of tenant 'acme' is shorter"));
  EXPECT_THAT(TenantRegistry::FromText("a 0123456789abcdef\na 0123456789abcdeX\n").status().message(), HasSubstr("line 2: tenant 'a' is listed twice"));
  EXPECT_THAT(TenantRegistry::FromText("a 0123456789abcdef\nb 0123456789abcdef\n").status().message(), HasSubstr("already used"));
  EXPECT_THAT(TenantRegistry::FromText("a 0123456789abcdef lots\n").status().message(), HasSubstr("line 1"));
  EXPECT_THAT(TenantRegistry::FromText("# nothing\n").status().message(), HasSubstr("no tenants"));
  EXPECT_EQ(TenantRegistry::FromFile("/nonexistent/tokens").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvc
