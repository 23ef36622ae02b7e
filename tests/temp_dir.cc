#include "tests/temp_dir.h"

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <gtest/gtest.h>

namespace kvc::testing {

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::path(::testing::TempDir()) / "kvc-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    std::cerr << "mkdtemp failed for " << tmpl << "\n";
    std::abort();
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace kvc::testing
