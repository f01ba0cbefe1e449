// Gloo's rendezvous reads and writes our Store through this adapter. Every key
// gets the group's prefix, so the world group and its sub-groups share one
// store (and its run namespace) without meeting; every wait has the group's
// deadline, and stops early when the group is destroyed.
#pragma once
#ifdef MOE_EP_WITH_GLOO
#include <gloo/rendezvous/store.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "store.h"

namespace moe::comm {

class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  GlooStoreAdapter(std::shared_ptr<comm::Store> store, std::string prefix,
                   std::chrono::steady_clock::time_point deadline, const std::atomic<bool>* cancelled);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

  // What get() has returned, by key without the prefix (the peers' published addresses).
  const std::map<std::string, std::vector<char>>& values_read() const { return read_; }

 private:
  std::vector<std::string> prefixed(const std::vector<std::string>& keys) const;
  // Waits for keys until the deadline (or timeout, the earlier), in slices so a cancel is seen.
  void wait_prefixed(const std::vector<std::string>& keys, std::chrono::steady_clock::time_point until);

  std::shared_ptr<comm::Store> store_;
  std::string prefix_;
  std::chrono::steady_clock::time_point deadline_;
  const std::atomic<bool>* cancelled_;
  std::map<std::string, std::vector<char>> read_;
};

}  // namespace moe::comm
#endif
