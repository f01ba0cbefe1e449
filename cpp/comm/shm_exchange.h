// The rows of an all-to-all-v between ranks of one machine, through shared
// memory instead of sockets (docs/architecture.md#shared-memory). Each rank owns one
// segment in /dev/shm that the others map read-only: a header (the sequence
// number of the rows posted, a futex word; the offset of each peer's rows;
// the rank's pid; a failed flag) and the rows it sends, each peer's in one
// piece. A rank copies its rows in and posts them; each peer waits for the
// post and copies its piece out. One copy in, one out, no kernel in between.
//
// The caller (the Gloo group) runs a collective over its sockets before every
// post, so no rank rewrites its rows while a peer may still be reading the
// previous ones; the segments themselves carry no acknowledgement.
//
// Segments are unlinked once every rank has mapped them: nothing is left in
// /dev/shm when a process dies. Memory behind a segment is reserved with
// fallocate before it is written, so a full /dev/shm refuses a reservation
// (the caller then moves those rows over its sockets) instead of killing the
// process with SIGBUS.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moe::comm {

class ShmExchange {
 public:
  // The most bytes one rank posts in one exchange.
  static constexpr int64_t kCapacity = int64_t(16) << 30;

  // This rank's segment, created and mapped; nullptr (with *why) when shared
  // memory is unusable here.
  static std::unique_ptr<ShmExchange> create(int rank, int size, std::string* why);
  ~ShmExchange();
  ShmExchange(const ShmExchange&) = delete;
  ShmExchange& operator=(const ShmExchange&) = delete;

  // The name the peers open this rank's segment by (at most 63 characters).
  const std::string& name() const { return name_; }
  // Maps every peer's segment (names[rank] is this rank's own) and checks that
  // each peer's process is visible from here; false with *why otherwise.
  bool attach(const std::vector<std::string>& names, std::string* why);
  // Removes this rank's segment's name; the mappings stay. Every rank calls it
  // once all have attached.
  void unlink();

  // Makes `bytes` of this rank's row area usable; false when the system
  // refuses the memory or bytes exceeds kCapacity.
  bool reserve(int64_t bytes);

  // A run of bytes at an offset from a base address.
  struct Piece {
    int64_t at, bytes;
  };
  // Copies what goes to each peer p != rank, the pieces[p] of src one after
  // the other, into the segment and posts it under `seq`. The area must have
  // been reserved for all of it.
  void post(uint32_t seq, const char* src, const std::vector<std::vector<Piece>>& pieces);

  // What waits may watch besides the peer: the caller's deadline, and whether
  // to stop (the group destroyed).
  struct Wait {
    std::chrono::steady_clock::time_point deadline;
    std::function<bool()> stopped;
  };
  enum class Outcome { Ok, Timeout, PeerGone, PeerFailed, Stopped };
  // Waits until peer p has posted `seq`, then copies what it posted for this
  // rank into the pieces of dst, in order.
  Outcome receive(int p, uint32_t seq, char* dst, const std::vector<Piece>& pieces, const Wait& wait);

  // Tells the peers this rank's group failed: their waits on it end at once.
  void mark_failed();

 private:
  struct Header;
  struct Mapping {
    void* base = nullptr;
    int fd = -1;
  };
  ShmExchange(int rank, int size) : rank_(rank), size_(size) {}
  static int64_t header_bytes(int size);
  Header* header(int p) const;
  char* rows(int p) const;

  int rank_, size_;
  std::string name_;
  bool linked_ = false;
  int64_t reserved_ = 0;
  std::vector<Mapping> maps_;  // by rank; maps_[rank_] is this rank's own, writable
};

// Whether MOE_EP_SHM allows shared memory (unset or "1": yes; "0": no).
bool shm_enabled();

}  // namespace moe::comm
