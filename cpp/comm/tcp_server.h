// The tcp store's server: one thread that serves every client with poll().
// It binds exactly the address it is given, checks each client's run id in a
// HELLO first, and closes any connection that breaks the wire format
// (tcp_wire.h) while it goes on serving the others. Keys live in memory.
#pragma once
#include <netinet/in.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace moe::comm {

class TcpServer {
 public:
  // Binds host:port (port 0: any free port) and starts serving; throws
  // ERR_MOE_VALUE when the address cannot be bound.
  TcpServer(const std::string& host, int port, std::string run_id);
  ~TcpServer();
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  // Stops the thread and closes every socket; idempotent.
  void stop();
  int port() const { return port_; }
  in_addr address() const { return addr_; }

 private:
  struct State;
  void serve();

  in_addr addr_{};
  int port_ = 0;
  int listen_fd_ = -1;
  int wake_read_ = -1;
  int wake_write_ = -1;
  std::string run_id_;
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;  // stop() may race between a watchdog and the store's owner
  std::thread thread_;
};

}  // namespace moe::comm
