// The tcp store's client side, and on rank 0 the owner of the server thread.
// Each call borrows a connection from a small pool (opening one, with retries
// until the deadline, when none is idle), so a get that waits on the server
// never holds up a concurrent set from the same process.
#pragma once
#include <netinet/in.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <unordered_set>
#include <vector>

#include "store.h"
#include "tcp_server.h"

namespace moe::comm {

class TcpStore : public Store {
 public:
  TcpStore(const std::string& host, int port, const StoreOptions& opts);
  ~TcpStore() override;

  void set(const std::string& key, const Bytes& value) override;
  Bytes get(const std::string& key, Millis timeout) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;
  bool check(const std::vector<std::string>& keys) override;
  int64_t add(const std::string& key, int64_t delta) override;
  void close() override;
  std::string url() const override { return "tcp://" + host_ + ":" + std::to_string(port_); }
  Millis timeout() const override { return timeout_; }

 private:
  struct Reply {
    uint16_t op = 0;
    Bytes value;
  };
  Reply request(const char* what, uint16_t op, const std::string& key, const Bytes& value,
                std::chrono::steady_clock::time_point deadline, Millis timeout);
  int acquire(const char* what, std::chrono::steady_clock::time_point deadline, Millis timeout);
  int connect_once(std::string* error);
  void release(int fd);
  void discard(int fd);
  void check_open(const char* what) const;

  std::string host_;
  int port_;
  std::string run_id_;
  Millis timeout_;
  std::unique_ptr<TcpServer> server_;  // rank 0 only

  std::mutex mu_;
  std::condition_variable cv_;  // wakes a connect retry on close()
  bool resolved_ = false;
  in_addr addr_{};
  std::vector<int> idle_;
  std::unordered_set<int> busy_;
  std::atomic<bool> closed_{false};
};

}  // namespace moe::comm
