// NCCL for the CUDA emulator (libnccl_emu.so, built with MOE_EP_CUDA=EMULATE):
// the functions of NCCL's C API that moe-ep's loader opens (nccl.h beside this
// file declares them as NCCL does), so that the NCCL process group and the
// layer's NCCL path run on emulated devices, one rank per process as on GPUs. Point MOE_EP_NCCL_LIBRARY at it (the
// cuda-emulated jest project does).
//
// Transport: Unix domain sockets, a full mesh. ncclGetUniqueId makes a private
// directory and names it in the id; at init every rank listens there, connects
// to each lower rank and accepts each higher one, then removes its socket file
// (the last rank out removes the directory). Device memory is host memory and
// the emulated streams run in order at once, so every operation moves its data
// before it returns: sends and receives of a group when the group ends, each
// peer's bytes in call order (NCCL's matching rule), all peers progressed
// together so that no pair of ranks waits on the other. An all-reduce sends
// every rank's buffer to every other and adds them in rank order (the same
// bits on every rank); a broadcast sends the root's buffer to the others.
// A peer that goes away is ncclRemoteError; no progress for a minute is
// ncclSystemError (the process group's own watchdog is shorter).
//
// Non-blocking communicators (ncclCommInitRankConfig with blocking = 0) work
// as NCCL's do for the caller: init and every operation return ncclInProgress
// at once while a worker thread connects or moves the data, and
// ncclCommGetAsyncError reports ncclInProgress until it has finished, then its
// result; ncclCommAbort stops the worker. So a peer that never takes part
// leaves the operation in progress until the caller's timeout aborts it, and
// the process group's timeout path runs as on GPUs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "nccl.h"

namespace {

constexpr const char* kIdTag = "moe-ep-nccl-emu:";
constexpr auto kStall = std::chrono::seconds(60);

size_t type_bytes(int type) {
  switch (type) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;
  }
}

struct Transfer {
  int peer;
  bool send;
  char* data;  // const for a send
  size_t bytes;
};

}  // namespace

// The communicator behind ncclComm_t.
struct ncclComm {
  int rank = 0;
  int size = 1;
  std::vector<int> fds;  // per peer; -1 for this rank
  bool non_blocking = false;
  std::atomic<int> async{ncclSuccess};  // an ncclResult_t: ncclInProgress while the worker runs
  std::atomic<bool> aborting{false};
  std::thread worker;
  std::string last_error;
  std::vector<Transfer> group;  // the open group's sends and receives
};

namespace {

// Runs `work` inline (blocking communicators) or on the communicator's worker
// thread, reporting ncclInProgress until it is done (non-blocking ones).
ncclResult_t start(ncclComm* c, std::function<ncclResult_t()> work) {
  if (!c->non_blocking) {
    const ncclResult_t r = work();
    if (r != ncclSuccess) c->async = r;
    return r;
  }
  if (c->worker.joinable()) c->worker.join();  // the caller settled the previous operation
  c->async = ncclInProgress;
  c->worker = std::thread([c, work] { c->async = work(); });
  return ncclInProgress;
}

thread_local int group_depth = 0;
thread_local std::vector<ncclComm*> group_comms;

ncclResult_t refuse(ncclComm* c, ncclResult_t r, const std::string& why) {
  if (c) c->last_error = why;
  return r;
}

ncclResult_t check_type(ncclComm* c, int type) {
  return type_bytes(type) ? ncclSuccess : refuse(c, ncclInvalidArgument, "unknown data type " + std::to_string(type));
}

// ---- the mesh ----------------------------------------------------------------------

std::string socket_path(const std::string& dir, int rank) { return dir + "/" + std::to_string(rank) + ".sock"; }

bool fill_address(sockaddr_un& a, const std::string& path) {
  memset(&a, 0, sizeof a);
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) return false;
  memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return true;
}

bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= size_t(w);
  }
  return true;
}

bool read_all(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= size_t(r);
  }
  return true;
}

ncclResult_t connect_mesh(ncclComm* c, const std::string& dir) {
  const int listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a;
  const std::string mine = socket_path(dir, c->rank);
  if (listener < 0 || !fill_address(a, mine) || bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      listen(listener, c->size) != 0) {
    if (listener >= 0) close(listener);
    return refuse(c, ncclSystemError, "cannot listen at " + mine + ": " + strerror(errno));
  }
  ncclResult_t result = ncclSuccess;
  const auto deadline = std::chrono::steady_clock::now() + kStall;
  for (int p = 0; p < c->rank && result == ncclSuccess; ++p) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    fill_address(a, socket_path(dir, p));
    while (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      if (c->aborting) {
        result = refuse(c, ncclSystemError, "aborted");
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        result = refuse(c, ncclSystemError, "rank " + std::to_string(p) + " did not listen within a minute");
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (result == ncclSuccess && !write_all(fd, &c->rank, sizeof c->rank))
      result = refuse(c, ncclRemoteError, "rank " + std::to_string(p) + " closed its connection");
    if (result == ncclSuccess)
      c->fds[size_t(p)] = fd;
    else
      close(fd);
  }
  for (int n = c->rank + 1; n < c->size && result == ncclSuccess; ++n) {
    pollfd w{listener, POLLIN, 0};
    while (poll(&w, 1, 100) != 1) {
      if (c->aborting) {
        result = refuse(c, ncclSystemError, "aborted");
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        result = refuse(c, ncclSystemError, "a higher rank did not connect within a minute");
        break;
      }
    }
    if (result != ncclSuccess) break;
    const int fd = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    int peer = -1;
    if (fd < 0 || !read_all(fd, &peer, sizeof peer) || peer <= c->rank || peer >= c->size ||
        c->fds[size_t(peer)] >= 0) {
      if (fd >= 0) close(fd);
      result = refuse(c, ncclInternalError, "a connection that is not a higher rank of this communicator");
      break;
    }
    c->fds[size_t(peer)] = fd;
  }
  close(listener);
  unlink(mine.c_str());
  rmdir(dir.c_str());  // succeeds for the last rank out
  return result;
}

void close_mesh(ncclComm* c) {
  for (int& fd : c->fds)
    if (fd >= 0) close(fd), fd = -1;
}

// ---- moving data -------------------------------------------------------------------

// Runs the transfers: this rank's own in call order (each send with the next
// receive), and every peer's bytes in call order, all peers at once.
ncclResult_t run_transfers(ncclComm* c, const std::vector<Transfer>& ts) {
  std::vector<const Transfer*> self_sends, self_recvs;
  for (const Transfer& t : ts)
    if (t.peer == c->rank) (t.send ? self_sends : self_recvs).push_back(&t);
  if (self_sends.size() != self_recvs.size())
    return refuse(c, ncclInvalidUsage,
                  "a group with " + std::to_string(self_sends.size()) + " sends to this rank and " +
                      std::to_string(self_recvs.size()) + " receives from it");
  for (size_t i = 0; i < self_sends.size(); ++i) {
    if (self_sends[i]->bytes != self_recvs[i]->bytes)
      return refuse(c, ncclInvalidUsage, "a send to this rank and its receive differ in size");
    if (self_sends[i]->bytes) memmove(self_recvs[i]->data, self_sends[i]->data, self_sends[i]->bytes);
  }
  struct Stream {
    std::vector<const Transfer*> items;
    size_t item = 0, offset = 0;
    bool done() const { return item == items.size(); }
  };
  std::vector<Stream> out(size_t(c->size)), in(size_t(c->size));
  for (const Transfer& t : ts)
    if (t.peer != c->rank && t.bytes > 0) (t.send ? out : in)[size_t(t.peer)].items.push_back(&t);
  auto last_progress = std::chrono::steady_clock::now();
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<int> peers;  // of fds, in order
    for (int p = 0; p < c->size; ++p) {
      short events = 0;
      if (!out[size_t(p)].done()) events |= POLLOUT;
      if (!in[size_t(p)].done()) events |= POLLIN;
      if (events) {
        fds.push_back(pollfd{c->fds[size_t(p)], events, 0});
        peers.push_back(p);
      }
    }
    if (fds.empty()) return ncclSuccess;
    if (poll(fds.data(), fds.size(), 100) < 0 && errno != EINTR)
      return refuse(c, ncclSystemError, std::string("poll: ") + strerror(errno));
    bool moved = false;
    for (size_t i = 0; i < fds.size(); ++i) {
      const pollfd& f = fds[i];
      const int p = peers[i];
      if (f.revents & (POLLERR | POLLNVAL))
        return refuse(c, ncclRemoteError, "the connection to rank " + std::to_string(p) + " failed");
      if ((f.revents & POLLOUT) && !out[size_t(p)].done()) {
        Stream& s = out[size_t(p)];
        const Transfer* t = s.items[s.item];
        const ssize_t w = send(f.fd, t->data + s.offset, t->bytes - s.offset, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
          return refuse(c, ncclRemoteError, "rank " + std::to_string(p) + " went away (" + strerror(errno) + ")");
        if (w > 0) {
          moved = true;
          if ((s.offset += size_t(w)) == t->bytes) ++s.item, s.offset = 0;
        }
      }
      if ((f.revents & (POLLIN | POLLHUP)) && !in[size_t(p)].done()) {
        Stream& s = in[size_t(p)];
        const Transfer* t = s.items[s.item];
        const ssize_t r = recv(f.fd, t->data + s.offset, t->bytes - s.offset, MSG_DONTWAIT);
        if (r == 0) return refuse(c, ncclRemoteError, "rank " + std::to_string(p) + " closed its connection");
        if (r < 0 && errno != EAGAIN && errno != EINTR)
          return refuse(c, ncclRemoteError, "rank " + std::to_string(p) + " went away (" + strerror(errno) + ")");
        if (r > 0) {
          moved = true;
          if ((s.offset += size_t(r)) == t->bytes) ++s.item, s.offset = 0;
        }
      }
    }
    if (c->aborting) return refuse(c, ncclSystemError, "aborted");
    const auto now = std::chrono::steady_clock::now();
    if (moved) last_progress = now;
    if (now - last_progress > kStall) return refuse(c, ncclSystemError, "no data moved for a minute");
  }
}

// Queues a send or a receive; outside a group it is a group of its own.
ncclResult_t queue(ncclComm* c, Transfer t, int type, size_t count) {
  if (!c) return ncclInvalidArgument;
  if (t.peer < 0 || t.peer >= c->size)
    return refuse(c, ncclInvalidArgument,
                  "peer " + std::to_string(t.peer) + " of " + std::to_string(c->size) + " ranks");
  if (const ncclResult_t r = check_type(c, type)) return r;
  t.bytes = count * type_bytes(type);
  c->group.push_back(t);
  if (group_depth > 0) {
    bool listed = false;
    for (ncclComm* g : group_comms) listed |= g == c;
    if (!listed) group_comms.push_back(c);
    return ncclSuccess;
  }
  std::vector<Transfer> ts;
  ts.swap(c->group);
  return start(c, [c, ts] { return run_transfers(c, ts); });
}

// ---- reductions ----------------------------------------------------------------------

template <class T>
double load(const char* p, size_t i) {
  T v;
  memcpy(&v, p + i * sizeof(T), sizeof(T));
  if constexpr (std::is_same<T, __half>::value)
    return __half2float(v);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value)
    return __bfloat162float(v);
  else
    return static_cast<double>(v);
}

template <class T>
void store(char* p, size_t i, double v) {
  T t;
  if constexpr (std::is_same<T, __half>::value)
    t = __float2half_rn(static_cast<float>(v));
  else if constexpr (std::is_same<T, __nv_bfloat16>::value)
    t = __float2bfloat16_rn(static_cast<float>(v));
  else if constexpr (std::is_same<T, float>::value)
    t = static_cast<float>(v);
  else
    t = static_cast<T>(v);
  memcpy(p + i * sizeof(T), &t, sizeof(T));
}

// out[i] = op over ranks (in rank order) of parts[r][i]: integers exactly,
// floats in their own type (each step rounded to T, as a reduction in T is).
template <class T>
void reduce(char* out, const std::vector<const char*>& parts, size_t count, int op) {
  for (size_t i = 0; i < count; ++i) {
    if constexpr (std::is_integral<T>::value) {
      T acc;
      memcpy(&acc, parts[0] + i * sizeof(T), sizeof(T));
      for (size_t r = 1; r < parts.size(); ++r) {
        T v;
        memcpy(&v, parts[r] + i * sizeof(T), sizeof(T));
        acc = op == ncclProd  ? T(acc * v)
              : op == ncclMax ? (v > acc ? v : acc)
              : op == ncclMin ? (v < acc ? v : acc)
                              : T(acc + v);
      }
      if (op == ncclAvg) acc = T(acc / T(parts.size()));
      memcpy(out + i * sizeof(T), &acc, sizeof(T));
    } else {
      double acc = load<T>(parts[0], i);
      for (size_t r = 1; r < parts.size(); ++r) {
        const double v = load<T>(parts[r], i);
        acc = op == ncclProd  ? acc * v
              : op == ncclMax ? (v > acc ? v : acc)
              : op == ncclMin ? (v < acc ? v : acc)
                              : acc + v;
        store<T>(out, i, acc);
        acc = load<T>(out, i);
      }
      if (op == ncclAvg) acc = acc / static_cast<double>(parts.size());
      store<T>(out, i, acc);
    }
  }
}

ncclResult_t reduce_typed(int type, char* out, const std::vector<const char*>& parts, size_t count, int op) {
  switch (type) {
    case ncclInt8:
      reduce<int8_t>(out, parts, count, op);
      break;
    case ncclUint8:
      reduce<uint8_t>(out, parts, count, op);
      break;
    case ncclInt32:
      reduce<int32_t>(out, parts, count, op);
      break;
    case ncclUint32:
      reduce<uint32_t>(out, parts, count, op);
      break;
    case ncclInt64:
      reduce<int64_t>(out, parts, count, op);
      break;
    case ncclUint64:
      reduce<uint64_t>(out, parts, count, op);
      break;
    case ncclFloat16:
      reduce<__half>(out, parts, count, op);
      break;
    case ncclFloat32:
      reduce<float>(out, parts, count, op);
      break;
    case ncclFloat64:
      reduce<double>(out, parts, count, op);
      break;
    case ncclBfloat16:
      reduce<__nv_bfloat16>(out, parts, count, op);
      break;
    default:
      return ncclInvalidArgument;
  }
  return ncclSuccess;
}

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  if (!version) return ncclInvalidArgument;
  *version = 21805;  // 2.18.5: the API of nccl.h here, non-blocking communicators included
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess:
      return "no error";
    case ncclSystemError:
      return "unhandled system error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
    default:
      return "internal error";
  }
}

const char* ncclGetLastError(ncclComm_t comm) { return comm ? comm->last_error.c_str() : ""; }

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (!id) return ncclInvalidArgument;
  char dir[] = "/tmp/moe-nccl-emu-XXXXXX";
  if (!mkdtemp(dir)) return ncclSystemError;
  memset(id, 0, sizeof *id);
  snprintf(id->internal, sizeof id->internal, "%s%s", kIdTag, dir);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t* config) {
  if (!comm) return ncclInvalidArgument;
  *comm = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  id.internal[sizeof id.internal - 1] = 0;
  if (strncmp(id.internal, kIdTag, strlen(kIdTag)) != 0) return ncclInvalidArgument;
  // As NCCL reads a config: the magic marks one made from NCCL_CONFIG_INITIALIZER,
  // and a field counts only where the caller's `size` covers it.
  if (config && config->magic != NCCL_CONFIG_MAGIC) return ncclInvalidArgument;
  const bool non_blocking =
      config && config->size >= offsetof(ncclConfig_t, blocking) + sizeof config->blocking && config->blocking == 0;
  ncclComm* c = new ncclComm;
  c->rank = rank;
  c->size = nranks;
  c->fds.assign(size_t(nranks), -1);
  c->non_blocking = non_blocking;
  const std::string dir = id.internal + strlen(kIdTag);
  const ncclResult_t r = start(c, [c, dir] {
    if (c->size == 1) return rmdir(dir.c_str()), ncclSuccess;
    return connect_mesh(c, dir);
  });
  if (r != ncclSuccess && r != ncclInProgress) {
    close_mesh(c);
    delete c;
    return r;
  }
  *comm = c;
  return r;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  if (!comm || !error) return ncclInvalidArgument;
  *error = static_cast<ncclResult_t>(comm->async.load());
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return ncclSuccess;
  comm->aborting = true;
  if (comm->worker.joinable()) comm->worker.join();
  close_mesh(comm);
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm && !comm->group.empty()) return ncclInvalidUsage;
  if (comm && comm->worker.joinable()) comm->worker.join();
  return ncclCommAbort(comm);
}

ncclResult_t ncclGroupStart(void) {
  ++group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
  if (group_depth == 0) return ncclInvalidUsage;
  if (--group_depth > 0) return ncclSuccess;
  ncclResult_t first = ncclSuccess;
  std::vector<ncclComm*> comms;
  comms.swap(group_comms);
  for (ncclComm* c : comms) {
    std::vector<Transfer> ts;
    ts.swap(c->group);
    const ncclResult_t r = start(c, [c, ts] { return run_transfers(c, ts); });
    if (first == ncclSuccess) first = r;
  }
  return first;
}

ncclResult_t ncclSend(const void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t) {
  return queue(comm, Transfer{peer, true, const_cast<char*>(static_cast<const char*>(buf)), 0}, type, count);
}

ncclResult_t ncclRecv(void* buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t) {
  return queue(comm, Transfer{peer, false, static_cast<char*>(buf), 0}, type, count);
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t) {
  if (!comm) return ncclInvalidArgument;
  if (op < ncclSum || op > ncclAvg) return refuse(comm, ncclInvalidArgument, "unknown reduction " + std::to_string(op));
  if (const ncclResult_t r = check_type(comm, type)) return r;
  return start(comm, [=] {
    const size_t bytes = count * type_bytes(type);
    std::vector<std::vector<char>> theirs(size_t(comm->size));
    std::vector<Transfer> ts;
    for (int p = 0; p < comm->size; ++p) {
      if (p == comm->rank) continue;
      theirs[size_t(p)].resize(bytes);
      ts.push_back(Transfer{p, true, const_cast<char*>(static_cast<const char*>(send)), bytes});
      ts.push_back(Transfer{p, false, theirs[size_t(p)].data(), bytes});
    }
    const ncclResult_t r = run_transfers(comm, ts);
    if (r != ncclSuccess) return r;
    std::vector<char> mine(static_cast<const char*>(send), static_cast<const char*>(send) + bytes);
    std::vector<const char*> parts;
    for (int p = 0; p < comm->size; ++p) parts.push_back(p == comm->rank ? mine.data() : theirs[size_t(p)].data());
    return reduce_typed(type, static_cast<char*>(recv), parts, count, op);
  });
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                           cudaStream_t) {
  if (!comm) return ncclInvalidArgument;
  if (root < 0 || root >= comm->size) return refuse(comm, ncclInvalidArgument, "root " + std::to_string(root));
  if (const ncclResult_t r = check_type(comm, type)) return r;
  return start(comm, [=] {
    const size_t bytes = count * type_bytes(type);
    std::vector<Transfer> ts;
    if (comm->rank == root) {
      if (bytes && send != recv) memmove(recv, send, bytes);
      for (int p = 0; p < comm->size; ++p)
        if (p != root) ts.push_back(Transfer{p, true, static_cast<char*>(recv), bytes});
    } else {
      ts.push_back(Transfer{root, false, static_cast<char*>(recv), bytes});
    }
    return run_transfers(comm, ts);
  });
}

}  // extern "C"
