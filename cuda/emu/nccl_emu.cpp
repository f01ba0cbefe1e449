// NCCL for the CUDA emulator's one device (libnccl_emu.so, built with
// MOE_EP_CUDA=EMULATE): the functions cpp/dist/nccl_api.h loads, for
// communicators of one rank, so that the NCCL process group and the layer's
// NCCL path run on the emulator at world size 1, as they do on a one-GPU
// machine. Point MOE_EP_NCCL_LIBRARY at it (the cuda-emulated jest project
// does).
//
// Semantics, as NCCL's for one rank: a grouped ncclSend to rank 0 is matched
// with the group's ncclRecv from rank 0 in call order, and each pair must
// agree on count and type; an all-reduce over one rank and a broadcast from
// rank 0 copy their input. Device memory is host memory and the emulated
// streams run in order at once, so the copies are made when the group ends.
// Non-blocking communicators (ncclCommInitRankConfig with blocking = 0)
// report ncclInProgress from init once, so the caller's polling runs. More
// than one rank is ncclInvalidUsage: ranks in other processes would need a
// transport this library does not have.
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <mutex>
#include <string>
#include <vector>

namespace {

enum Result : int { kSuccess = 0, kInternalError = 3, kInvalidArgument = 4, kInvalidUsage = 5, kInProgress = 7 };

struct UniqueId {
  char internal[128];
};
struct Config {  // ncclConfig_t as NCCL 2.14 declared it
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
};

size_t type_bytes(int type) {
  switch (type) {
    case 0: case 1: return 1;                  // int8, uint8
    case 2: case 3: case 7: return 4;          // int32, uint32, float32
    case 4: case 5: case 8: return 8;          // int64, uint64, float64
    case 6: case 9: return 2;                  // float16, bfloat16
    default: return 0;
  }
}

struct Transfer {
  const void* send;
  void* recv;
  size_t count;
  int type;
};

struct Comm {
  Result async = kSuccess;  // kInProgress right after a non-blocking init
  std::string last_error;
  std::vector<Transfer> sends, recvs;  // of the open group
};

thread_local int group_depth = 0;
thread_local std::vector<Comm*> group_comms;  // communicators with operations in the open group

Result refuse(Comm* c, Result r, const std::string& why) {
  if (c) c->last_error = why;
  return r;
}

Result flush(Comm* c) {
  if (c->sends.size() != c->recvs.size()) {
    const std::string why = "a group with " + std::to_string(c->sends.size()) + " sends to rank 0 and " +
                            std::to_string(c->recvs.size()) + " receives from it";
    c->sends.clear();
    c->recvs.clear();
    return refuse(c, kInvalidUsage, why);
  }
  for (size_t i = 0; i < c->sends.size(); ++i) {
    const Transfer& s = c->sends[i];
    const Transfer& r = c->recvs[i];
    if (s.count != r.count || s.type != r.type) {
      c->sends.clear();
      c->recvs.clear();
      return refuse(c, kInvalidUsage, "send " + std::to_string(i) + " of the group does not match its receive");
    }
    if (s.count) memmove(r.recv, s.send, s.count * type_bytes(s.type));
  }
  c->sends.clear();
  c->recvs.clear();
  return kSuccess;
}

// Queues a send or a receive; outside a group it is a group of its own.
Result queue(Comm* c, Transfer t, int peer, bool is_send) {
  if (!c) return kInvalidArgument;
  if (peer != 0) return refuse(c, kInvalidArgument, "peer " + std::to_string(peer) + " of a one-rank communicator");
  if (!type_bytes(t.type)) return refuse(c, kInvalidArgument, "unknown data type " + std::to_string(t.type));
  (is_send ? c->sends : c->recvs).push_back(t);
  if (group_depth > 0) {
    bool listed = false;
    for (Comm* g : group_comms) listed |= g == c;
    if (!listed) group_comms.push_back(c);
    return kSuccess;
  }
  return flush(c);  // alone, a send to itself never completes: NCCL would hang, this refuses
}

Result copy_op(Comm* c, const void* send, void* recv, size_t count, int type) {
  if (!c) return kInvalidArgument;
  if (!type_bytes(type)) return refuse(c, kInvalidArgument, "unknown data type " + std::to_string(type));
  if (count && send != recv) memmove(recv, send, count * type_bytes(type));
  return kSuccess;
}

}  // namespace

extern "C" {

Result ncclGetVersion(int* version) {
  if (!version) return kInvalidArgument;
  *version = 21805;  // 2.18.5: the ABI of cpp/dist/nccl_api.h, non-blocking communicators included
  return kSuccess;
}

const char* ncclGetErrorString(Result r) {
  switch (r) {
    case kSuccess: return "no error";
    case kInvalidArgument: return "invalid argument";
    case kInvalidUsage: return "invalid usage";
    case kInProgress: return "operation in progress";
    default: return "internal error";
  }
}

const char* ncclGetLastError(Comm* comm) { return comm ? comm->last_error.c_str() : ""; }

Result ncclGetUniqueId(UniqueId* id) {
  if (!id) return kInvalidArgument;
  memset(id, 0, sizeof *id);
  snprintf(id->internal, sizeof id->internal, "moe-ep emulated nccl");
  return kSuccess;
}

Result ncclCommInitRankConfig(Comm** comm, int nranks, UniqueId, int rank, Config* config) {
  if (!comm) return kInvalidArgument;
  *comm = nullptr;
  if (nranks != 1 || rank != 0) return kInvalidUsage;  // no transport to other processes
  Comm* c = new Comm;
  if (config && config->blocking == 0) c->async = kInProgress;
  *comm = c;
  return c->async;
}

Result ncclCommInitRank(Comm** comm, int nranks, UniqueId id, int rank) {
  return ncclCommInitRankConfig(comm, nranks, id, rank, nullptr);
}

Result ncclCommGetAsyncError(Comm* comm, Result* error) {
  if (!comm || !error) return kInvalidArgument;
  *error = comm->async;
  comm->async = kSuccess;  // a non-blocking init is done by the first poll
  return kSuccess;
}

Result ncclCommAbort(Comm* comm) {
  delete comm;
  return kSuccess;
}

Result ncclCommDestroy(Comm* comm) {
  if (comm && (!comm->sends.empty() || !comm->recvs.empty())) return kInvalidUsage;
  delete comm;
  return kSuccess;
}

Result ncclGroupStart() {
  ++group_depth;
  return kSuccess;
}

Result ncclGroupEnd() {
  if (group_depth == 0) return kInvalidUsage;
  if (--group_depth > 0) return kSuccess;
  Result first = kSuccess;
  for (Comm* c : group_comms) {
    const Result r = flush(c);
    if (first == kSuccess) first = r;
  }
  group_comms.clear();
  return first;
}

Result ncclSend(const void* buf, size_t count, int type, int peer, Comm* comm, void*) {
  return queue(comm, Transfer{buf, nullptr, count, type}, peer, true);
}

Result ncclRecv(void* buf, size_t count, int type, int peer, Comm* comm, void*) {
  return queue(comm, Transfer{nullptr, buf, count, type}, peer, false);
}

Result ncclAllReduce(const void* send, void* recv, size_t count, int type, int op, Comm* comm, void*) {
  if (op < 0 || op > 4) return refuse(comm, kInvalidArgument, "unknown reduction " + std::to_string(op));
  return copy_op(comm, send, recv, count, type);  // sum, prod, max, min and avg over one rank
}

Result ncclBroadcast(const void* send, void* recv, size_t count, int type, int root, Comm* comm, void*) {
  if (root != 0) return refuse(comm, kInvalidArgument, "root " + std::to_string(root) + " of a one-rank communicator");
  return copy_op(comm, send, recv, count, type);
}

}  // extern "C"
