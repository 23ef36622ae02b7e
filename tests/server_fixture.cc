#include "tests/server_fixture.h"

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <gtest/gtest.h>

namespace kvc::testing {

ServerOptions TestServerOptions(const std::string& dir) {
  ServerOptions o;
  o.listen_address = "127.0.0.1:0";
  o.metrics_address = "";  // civetweb takes up to 2 s to stop; tests that scrape enable it
  o.data_dir = dir + "/data";
  o.host_capacity_bytes = 8ull << 20;
  o.host_shards = 4;
  o.disk_capacity_bytes = 256ull << 20;
  o.worker_threads = 4;
  o.shutdown_grace = absl::Seconds(2);
  o.auth_tokens_file = dir + "/tokens";
  std::ofstream(o.auth_tokens_file) << "# tenant token [quota]\n"
                                    << "a " << kTokenA << "\n"
                                    << "b " << kTokenB << "\n"
                                    << "q " << kTokenQ << " 1MiB\n";
  return o;
}

std::unique_ptr<CacheClient> ClientFor(int port, const std::string& token) {
  ClientOptions o;
  o.address = "127.0.0.1:" + std::to_string(port);
  o.token = token;
  o.timeout = absl::Seconds(30);
  auto c = CacheClient::Connect(o);
  if (!c.ok()) {
    std::cerr << c.status() << "\n";
    std::abort();
  }
  return *std::move(c);
}

}  // namespace kvc::testing
