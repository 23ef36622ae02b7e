// BlockWriter: the worker's asynchronous write-through of completed KV
// blocks to the cache service, off the decode critical path, in bounded
// memory.
//
// Submit queues an encoded block and returns; one background thread sends
// queued blocks in batches (BlockClient::Put). The queue holds at most
// max_queued_bytes:
//   - while the service answers, a full queue makes Submit wait for room
//     (backpressure: a worker that produces KV faster than the service
//     takes it slows down instead of growing a queue);
//   - while the service is unreachable (a Put failed with UNAVAILABLE,
//     DEADLINE_EXCEEDED, ABORTED or INTERNAL), the writer is *degraded*:
//     Submit never waits (generation goes on with the local hot set), the
//     oldest queued blocks are dropped to make room (counted), and the
//     thread retries with exponential backoff; the first Put that succeeds
//     ends degraded mode and the backlog drains (catch-up).
// A batch the service refuses for what it is (INVALID_ARGUMENT,
// RESOURCE_EXHAUSTED, PERMISSION_DENIED, ...) is dropped and counted as
// rejected: retrying would not help.
#ifndef KVC_WORKER_KV_BLOCK_WRITER_H_
#define KVC_WORKER_KV_BLOCK_WRITER_H_

#include <cstdint>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "worker/kv/block_client.h"

namespace kvc {

struct BlockWriterOptions {
  // Bytes of encoded blocks queued or in flight, at most. Default 64 MiB.
  size_t max_queued_bytes = 64ull << 20;
  // Blocks per Put. Default 32.
  int32_t max_batch_blocks = 32;
  // Bytes per Put (a batch stops before passing it; one block always goes).
  // Default 16 MiB.
  size_t max_batch_bytes = 16ull << 20;
  // Backoff between retries while degraded: doubles from the first to the
  // last. Defaults 20 ms and 1 s.
  absl::Duration retry_initial = absl::Milliseconds(20);
  absl::Duration retry_max = absl::Seconds(1);
  // A batch refused with RESOURCE_EXHAUSTED (the service busy: its queue or
  // receive pool full; or a quota) is tried again this many times, with
  // the backoff above, before its blocks count as rejected. Default 5.
  int32_t busy_retries = 5;
  // Ask the service to sync each batch to disk before answering. Default false.
  bool write_through_disk = false;

  absl::Status Validate() const;
};

struct BlockWriterStats {
  uint64_t submitted = 0;       // blocks handed to Submit
  uint64_t stored = 0;          // blocks the service acknowledged
  uint64_t stored_bytes = 0;
  uint64_t dropped = 0;         // dropped while degraded, queue full
  uint64_t rejected = 0;        // refused by the service (not retried)
  uint64_t put_failures = 0;    // Put calls that failed (any reason)
  uint64_t degraded_episodes = 0;
  uint64_t submit_waits = 0;    // Submit calls that waited for room
  bool degraded = false;
  size_t queued_bytes = 0;
  size_t queued_blocks = 0;
  absl::Status last_error;      // of the last failed Put
};

// Thread-safe. `client` must outlive the writer.
class BlockWriter {
 public:
  BlockWriter(BlockClient* client, const BlockWriterOptions& options);
  // Stops the thread after one last attempt at what is queued (bounded by
  // the retry backoff); what cannot be sent is dropped.
  ~BlockWriter();
  BlockWriter(const BlockWriter&) = delete;
  BlockWriter& operator=(const BlockWriter&) = delete;

  // Called once per block when it is resolved: true when the service stored
  // it, false when it was dropped or refused. On the writer's thread (or the
  // submitter's, for a block dropped at once), with no lock of the writer held.
  using Done = absl::AnyInvocable<void(bool stored)>;

  // Queues one serialized kvcache.v1.Block (see the class comment for when
  // it waits). A block larger than max_queued_bytes is refused with
  // INVALID_ARGUMENT; after the destructor began, FAILED_PRECONDITION (done
  // is not called then).
  absl::Status Submit(std::string block, Done done = nullptr);

  // Waits until every block submitted so far is stored, dropped or
  // rejected, or `timeout` passes (DEADLINE_EXCEEDED, with what is left).
  absl::Status Flush(absl::Duration timeout);

  bool degraded() const;
  BlockWriterStats stats() const;

 private:
  void Run();
  // Whether a failed Put means the service is unreachable (retry) rather
  // than that it refused the blocks.
  static bool Retriable(const absl::Status& s);

  BlockClient* const client_;
  const BlockWriterOptions options_;

  struct Entry {
    std::string bytes;
    Done done;
  };
  // Calls the entries' callbacks (outside mu_).
  void Resolve(std::vector<Entry>& entries, bool stored) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status SubmitLocked(Entry entry, size_t bytes, std::vector<Entry>& dropped);

  mutable absl::Mutex mu_;
  std::deque<Entry> queue_ ABSL_GUARDED_BY(mu_);
  size_t sending_blocks_ ABSL_GUARDED_BY(mu_) = 0;  // taken by the thread, not yet resolved
  size_t sending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  BlockWriterStats stats_ ABSL_GUARDED_BY(mu_);
  uint64_t resolved_ ABSL_GUARDED_BY(mu_) = 0;  // stored + dropped + rejected, callbacks run
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool resolved_stored_ = false;  // writer thread only: what `resolved` entries get
  std::thread thread_;
};

}  // namespace kvc

#endif  // KVC_WORKER_KV_BLOCK_WRITER_H_
