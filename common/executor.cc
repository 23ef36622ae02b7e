#include "common/executor.h"

#include <utility>

namespace kvc {

BoundedExecutor::BoundedExecutor(std::string name, int threads, size_t max_queue)
    : name_(std::move(name)), max_queue_(max_queue) {
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

BoundedExecutor::~BoundedExecutor() { Shutdown(); }

bool BoundedExecutor::TrySubmit(absl::AnyInvocable<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || queue_.size() >= max_queue_) return false;
  queue_.push_back(std::move(task));
  return true;
}

void BoundedExecutor::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
  }
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
}

size_t BoundedExecutor::queued() const {
  absl::MutexLock lock(&mu_);
  return queue_.size();
}

void BoundedExecutor::WorkerLoop() {
  for (;;) {
    absl::AnyInvocable<void()> task;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](BoundedExecutor* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mu_) {
            return e->stopping_ || !e->queue_.empty();
          },
          this));
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace kvc
