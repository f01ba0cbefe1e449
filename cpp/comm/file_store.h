// Store on a shared directory, for ranks on one machine. Each key is one file
// in DIR/<run id>/: written to a temporary file and renamed into place, so a
// reader sees a whole value or none. add() holds an flock on DIR/<run id>/.lock.
//
// Cleanup: no rank deletes a key while any store of the run is open, since a
// rank cannot know that the others have read what it wrote. Each store counts
// itself in DIR/<run id>/.refs (opened, closed, and the distinct ranks that
// opened, marked by .rank-<r> files), under the lock. The close that leaves
// every store closed, once all world_size ranks have opened one, renames the
// run's directory away under the lock and removes it. A rank that never
// closes (killed) leaves the directory behind; a store opened under the run id
// after that starts empty.
#pragma once
#include <atomic>
#include <condition_variable>
#include <mutex>

#include "store.h"

namespace moe::comm {

class FileStore : public Store {
 public:
  FileStore(const std::string& dir, const StoreOptions& opts);
  ~FileStore() override;

  void set(const std::string& key, const Bytes& value) override;
  Bytes get(const std::string& key, Millis timeout) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;
  bool check(const std::vector<std::string>& keys) override;
  int64_t add(const std::string& key, int64_t delta) override;
  void close() override;
  std::string url() const override { return "file://" + root_; }
  Millis timeout() const override { return timeout_; }

  // The file that holds a key, relative to the run's directory: "k" + hex of
  // the key for keys up to 100 bytes, else "h" + a 64-bit hash and the length
  // (the file repeats the full key, so a hash collision is detected, not misread).
  static std::string file_name(const std::string& key);

 private:
  bool read_entry(const std::string& key, Bytes* value) const;
  void write_entry(const std::string& key, const Bytes& value);
  // Polls until the key's file exists or the deadline passes; false on timeout.
  bool wait_for(const char* op, const std::string& key, std::chrono::steady_clock::time_point deadline, Bytes* value);
  void check_open(const char* op) const;
  [[noreturn]] void gone_error(const char* op) const;
  // Counts this store in the run's .refs; the last close removes the run.
  void enter();
  void leave();

  std::string root_;  // DIR as given
  std::string dir_;   // DIR/<run id>
  std::string run_id_;
  int rank_;
  int world_size_;
  Millis timeout_;
  std::atomic<bool> closed_{false};
  std::mutex mu_;
  std::condition_variable closed_cv_;
  std::atomic<uint64_t> temp_counter_{0};
};

}  // namespace moe::comm
