// The tcp store's server: one thread that serves every client with poll().
// It binds exactly the address it is given, checks each client's run id in a
// HELLO first, and closes any connection that breaks the wire format
// (tcp_wire.h) while it goes on serving the others. Keys live in memory.
//
// Bounds, so that a stranger cannot grow rank 0's memory:
// - before its HELLO is accepted a connection may send only that HELLO
//   (16-byte header and a run id of at most 128 bytes); anything else, or no
//   HELLO within 10 s, and it is dropped;
// - the run holds at most max_bytes: every key counts its bytes plus
//   kEntryOverheadBytes, every value its bytes for as long as it lives (a
//   replaced value still being sent to a reader included), and a SET or ADD
//   reserves its share when its header arrives. One that would pass the bound
//   is read to its end and discarded, answered with ERROR, and its connection
//   closed;
// - at most 1024 connections, each buffering at most a 4 KiB key otherwise.
// Every dropped client gets one line on stderr naming the bound and the peer
// (at most 20 lines per 10 s; the rest are counted).
#pragma once
#include <netinet/in.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace moe::comm {

// What each key costs beyond its bytes: the map node, the string and the shared value's header.
constexpr size_t kEntryOverheadBytes = 64;

class TcpServer {
 public:
  // Binds host:port (port 0: any free port) and starts serving; throws
  // ERR_MOE_VALUE when the address cannot be bound.
  TcpServer(const std::string& host, int port, std::string run_id, size_t max_bytes);
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
  size_t max_bytes_;
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;  // stop() may race between a watchdog and the store's owner
  std::thread thread_;
};

}  // namespace moe::comm
