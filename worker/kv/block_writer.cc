#include "worker/kv/block_writer.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace kvc {

absl::Status BlockWriterOptions::Validate() const {
  if (max_queued_bytes == 0) return absl::InvalidArgumentError("block writer: max_queued_bytes must be > 0");
  if (max_batch_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("block writer: max_batch_blocks must be > 0, got ", max_batch_blocks));
  }
  if (max_batch_bytes == 0) return absl::InvalidArgumentError("block writer: max_batch_bytes must be > 0");
  if (busy_retries < 0) return absl::InvalidArgumentError("block writer: busy_retries < 0");
  if (retry_initial <= absl::ZeroDuration() || retry_max < retry_initial) {
    return absl::InvalidArgumentError("block writer: need 0 < retry_initial <= retry_max");
  }
  return absl::OkStatus();
}

BlockWriter::BlockWriter(BlockClient* client, const BlockWriterOptions& options)
    : client_(client), options_(options) {
  thread_ = std::thread([this] { Run(); });
}

BlockWriter::~BlockWriter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

bool BlockWriter::Retriable(const absl::Status& s) { return IsUnreachable(s); }

void BlockWriter::Resolve(std::vector<Entry>& entries, bool stored) {
  if (entries.empty()) return;
  for (Entry& e : entries) {
    if (e.done) e.done(stored);
  }
  // Counted only now, so Flush returns after every callback ran.
  absl::MutexLock lock(&mu_);
  resolved_ += entries.size();
  entries.clear();
}

absl::Status BlockWriter::Submit(std::string block, Done done) {
  const size_t bytes = block.size();
  if (bytes > options_.max_queued_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("block writer: a block of ", bytes,
                                                   " bytes is larger than max_queued_bytes (",
                                                   options_.max_queued_bytes, ")"));
  }
  std::vector<Entry> dropped;
  absl::Status result = SubmitLocked(Entry{std::move(block), std::move(done)}, bytes, dropped);
  Resolve(dropped, false);
  return result;
}

absl::Status BlockWriter::SubmitLocked(Entry entry, size_t bytes, std::vector<Entry>& dropped) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::FailedPreconditionError("block writer: stopping");
  ++stats_.submitted;
  auto fits = [&] { return stats_.queued_bytes + sending_bytes_ + bytes <= options_.max_queued_bytes; };
  if (!fits() && !stats_.degraded) {
    ++stats_.submit_waits;
    // Room, degraded mode (then the drop rule below), or shutdown.
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return fits() || stats_.degraded || stopping_; };
    mu_.Await(absl::Condition(&ready));
  }
  if (!fits()) {
    // Degraded: the oldest queued blocks make room; if the batch in flight
    // alone leaves none, this block is the one dropped.
    while (!fits() && !queue_.empty()) {
      stats_.queued_bytes -= queue_.front().bytes.size();
      --stats_.queued_blocks;
      dropped.push_back(std::move(queue_.front()));
      queue_.pop_front();
      ++stats_.dropped;
    }
    if (!fits()) {
      ++stats_.dropped;
      dropped.push_back(std::move(entry));
      return absl::OkStatus();
    }
  }
  stats_.queued_bytes += bytes;
  ++stats_.queued_blocks;
  queue_.push_back(std::move(entry));
  return absl::OkStatus();
}

void BlockWriter::Run() {
  absl::Duration backoff = options_.retry_initial;
  int32_t busy_tries = 0;  // of the batch at the front
  std::vector<Entry> batch, resolved;
  std::vector<absl::string_view> views;
  for (;;) {
    Resolve(resolved, resolved_stored_);
    {
      absl::MutexLock lock(&mu_);
      auto work = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || stopping_; };
      mu_.Await(absl::Condition(&work));
      if (queue_.empty()) return;  // stopping, nothing left
      size_t bytes = 0;
      while (!queue_.empty() && static_cast<int32_t>(batch.size()) < options_.max_batch_blocks &&
             (batch.empty() || bytes + queue_.front().bytes.size() <= options_.max_batch_bytes)) {
        bytes += queue_.front().bytes.size();
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
      stats_.queued_bytes -= bytes;
      stats_.queued_blocks -= batch.size();
      sending_blocks_ = batch.size();
      sending_bytes_ = bytes;
    }
    views.clear();
    for (const Entry& e : batch) views.push_back(e.bytes);
    const absl::Status s = client_->Put(views, options_.write_through_disk);
    absl::MutexLock lock(&mu_);
    sending_blocks_ = 0;
    sending_bytes_ = 0;
    if (s.ok()) {
      stats_.stored += batch.size();
      for (const Entry& e : batch) stats_.stored_bytes += e.bytes.size();
      if (stats_.degraded) {
        KVC_LOG(kInfo, "write_through_recovered").With("queued_blocks", uint64_t{stats_.queued_blocks});
      }
      stats_.degraded = false;
      backoff = options_.retry_initial;
      busy_tries = 0;
      resolved = std::move(batch);
      batch.clear();
      resolved_stored_ = true;
      continue;
    }
    ++stats_.put_failures;
    stats_.last_error = s;
    // A busy service gets a few tries (a refusal for what the blocks are
    // does not change with time: rejected at once).
    const bool busy = absl::IsResourceExhausted(s) && busy_tries++ < options_.busy_retries;
    if (!Retriable(s) && !busy) {
      busy_tries = 0;
      stats_.degraded = false;  // it answered
      KVC_LOG(kWarning, "write_through_rejected").With("blocks", uint64_t{batch.size()}).With("error", s.ToString());
      stats_.rejected += batch.size();
      resolved = std::move(batch);
      batch.clear();
      resolved_stored_ = false;
      continue;
    }
    if (!stats_.degraded) {
      ++stats_.degraded_episodes;
      KVC_LOG(kWarning, "write_through_degraded").With("error", s.ToString());
    }
    stats_.degraded = true;
    if (stopping_) {
      // No one will wait for a service that is away: drop everything.
      const uint64_t lost = batch.size() + queue_.size();
      stats_.dropped += lost;
      for (Entry& e : queue_) batch.push_back(std::move(e));
      queue_.clear();
      stats_.queued_bytes = 0;
      stats_.queued_blocks = 0;
      // Resolved (false) at the top of the loop, which then ends.
      resolved = std::move(batch);
      batch.clear();
      resolved_stored_ = false;
      continue;
    }
    // The batch goes back to the front, oldest first, to be retried; when the
    // queue has filled meanwhile, the oldest blocks give way (as in Submit).
    size_t bytes = stats_.queued_bytes;
    for (auto it = batch.rbegin(); it != batch.rend(); ++it) {
      if (bytes + it->bytes.size() > options_.max_queued_bytes) {
        ++stats_.dropped;
        resolved.push_back(std::move(*it));
        continue;
      }
      bytes += it->bytes.size();
      ++stats_.queued_blocks;
      queue_.push_front(std::move(*it));
    }
    stats_.queued_bytes = bytes;
    batch.clear();
    resolved_stored_ = false;
    auto stop = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    mu_.AwaitWithTimeout(absl::Condition(&stop), backoff);
    backoff = std::min(backoff * 2, options_.retry_max);
  }
}

absl::Status BlockWriter::Flush(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return resolved_ >= stats_.submitted; };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat("block writer: ", stats_.submitted - resolved_,
                                                    " blocks not yet stored after ", absl::FormatDuration(timeout),
                                                    stats_.degraded ? " (cache service unreachable)" : ""));
  }
  return absl::OkStatus();
}

bool BlockWriter::degraded() const {
  absl::MutexLock lock(&mu_);
  return stats_.degraded;
}

BlockWriterStats BlockWriter::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

}  // namespace kvc
