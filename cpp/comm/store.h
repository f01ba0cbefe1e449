// The rendezvous store under every process group (the c10d Store's role):
// ranks publish small values under string keys and wait for each other's.
// Two kinds, chosen by URL:
//   file:///abs/dir   one machine; keys are files in dir/<run id>/
//   tcp://host:port   rank 0 serves from a thread in its own process, the
//                     other ranks (and rank 0 itself) connect as clients
// Every run has its own namespace (StoreOptions::run_id), so nothing left
// behind by an earlier run is ever read.
//
// Bounds (docs/architecture.md#stores): the tcp server holds at most
// StoreOptions::max_bytes for its run, and a connection may send nothing but a
// HELLO before its handshake (tcp_server.h). A file store's directory goes
// when every rank has closed its store (file_store.h).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe::comm {

using Bytes = std::vector<uint8_t>;
using Millis = std::chrono::milliseconds;

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const Bytes& value) = 0;
  // Waits for the key; ERR_MOE_TIMEOUT naming the key when it does not appear in time.
  virtual Bytes get(const std::string& key, Millis timeout) = 0;
  virtual void wait(const std::vector<std::string>& keys, Millis timeout) = 0;
  // Do all the keys exist now?
  virtual bool check(const std::vector<std::string>& keys) = 0;
  // Atomic counter: adds delta to the integer held by key (0 when absent) and
  // returns the new value. The value is kept as decimal text, so get() reads "3".
  virtual int64_t add(const std::string& key, int64_t delta) = 0;

  // Ends the store: calls blocked in get/wait fail with ERR_MOE_DISPOSED, later
  // calls too, and a tcp server stops. Destruction closes as well.
  virtual void close() {}
  // The store's address, with the port a tcp server actually bound (port 0 asks for any).
  virtual std::string url() const = 0;
  // The default timeout of set/check/add and of connecting.
  virtual Millis timeout() const = 0;
};

// The timeout of a store's calls and connecting, and of a process group's
// collectives and rendezvous, when the caller names none: 5 minutes.
constexpr Millis kDefaultTimeout{300000};

// Default and smallest bound on what a tcp store's run may hold (keys, values and
// their bookkeeping). moe-ep itself stores little: an NCCL unique id (128 bytes)
// per NCCL group and, per Gloo group of n ranks, n values of (n - 1) Gloo
// addresses (136 bytes each), about 36 MB for a world of 512 ranks.
constexpr size_t kDefaultMaxStoreBytes = size_t(256) << 20;
constexpr size_t kMinMaxStoreBytes = size_t(64) << 10;

struct StoreOptions {
  int rank = 0;
  int world_size = 1;
  std::string run_id;
  Millis timeout = kDefaultTimeout;
  // tcp:// only: the most rank 0's server holds for the run (keys, values, and
  // values being received); a client past it is dropped.
  size_t max_bytes = kDefaultMaxStoreBytes;
};

// "file:///abs/dir" or "tcp://host:port" (rank 0 serves, the others connect;
// host may be a name or IPv4 and defaults to 127.0.0.1 in "tcp://:port").
std::shared_ptr<Store> open_store(const std::string& url, const StoreOptions& opts);

// Limits shared by both stores. A tcp store's values also count against its
// run's max_bytes, so below 16 MiB that bound is the largest value.
constexpr size_t kMaxKeyBytes = 4096;
constexpr size_t kMaxValueBytes = size_t(16) << 20;
constexpr size_t kMaxRunIdBytes = 128;

// A key as messages show it: printable ASCII kept, other bytes as \xNN, long keys cut.
std::string describe_key(const std::string& key);
// Throws ERR_MOE_VALUE unless key and value are within the limits above.
void check_key(const std::string& key, const char* op);
void check_value(const Bytes& value, const char* op);
// The decimal text of a counter; throws ERR_MOE_VALUE when it is not one.
int64_t parse_counter(const Bytes& text, const std::string& key);
Bytes format_counter(int64_t value);
// now + timeout; timeouts beyond a year count as a year, so the clock cannot overflow.
std::chrono::steady_clock::time_point deadline_after(Millis timeout);
// Adds with an ERR_MOE_VALUE on int64 overflow.
int64_t add_counter(int64_t current, int64_t delta, const std::string& key);

}  // namespace moe::comm
