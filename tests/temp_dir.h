// A fresh directory for one test, removed with everything in it.
#ifndef KVC_TESTS_TEMP_DIR_H_
#define KVC_TESTS_TEMP_DIR_H_

#include <string>

namespace kvc::testing {

// Created under the test temp dir by the constructor (aborts if it cannot
// be), removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace kvc::testing

#endif  // KVC_TESTS_TEMP_DIR_H_
