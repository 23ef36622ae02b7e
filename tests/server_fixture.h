// A real cache service on 127.0.0.1:0 over a fresh data directory, and
// clients for its tenants, for tests that go through gRPC.
#ifndef KVC_TESTS_SERVER_FIXTURE_H_
#define KVC_TESTS_SERVER_FIXTURE_H_

#include <memory>
#include <string>

#include "cachesvc/server/options.h"
#include "cachesvc/server/server.h"
#include "common/clock.h"
#include "tests/temp_dir.h"
#include "worker/cache_client.h"

namespace kvc::testing {

// Tokens of the tenants the fixture's tokens file defines.
inline constexpr char kTokenA[] = "token-of-tenant-a-0123456789";
inline constexpr char kTokenB[] = "token-of-tenant-b-0123456789";
inline constexpr char kTokenQ[] = "token-of-tenant-q-0123456789";  // tenant "q", quota 1 MiB

// Options for a small test server in `dir`: auth on (tenants a, b, q),
// metrics off, 8 MiB host tier, 256 MiB disk tier.
ServerOptions TestServerOptions(const std::string& dir);

std::unique_ptr<CacheClient> ClientFor(int port, const std::string& token);

}  // namespace kvc::testing

#endif  // KVC_TESTS_SERVER_FIXTURE_H_
