// NCCL, loaded at run time (docs/architecture.md#process-groups): no build-time
// dependency on NCCL, and no clash with another copy of NCCL in the same
// process (a PyTorch in the same Node process, say), because the library is
// opened with RTLD_LOCAL and reached only through the function pointers below.
//
// The declarations are our own, written from nccl.h: the values of the enums
// and the layout of ncclUniqueId are part of NCCL's stable ABI.
//
// Which library: the file named by MOE_EP_NCCL_LIBRARY when it is set, else
// "libnccl.so.2" from the loader's search path. Nothing else is tried, so a
// named file is never silently replaced by another.
//
// The checks run once per process, in this order, and the first that fails is
// the reason the status gives:
//   1. the library opens                 "library not found: ..." / "library could not be loaded: ..."
//   2. it has ncclGetVersion             "missing symbol: ..."
//   3. its version is >= 2.7.3           "version too old: ..."  (ncclSend/ncclRecv came in 2.7.3)
//   4. it has every other function used  "missing symbol: ..."
//   5. a CUDA device answers             "no device: ..."
// The version is read before the other symbols are looked up because a
// library older than 2.7 lacks ncclSend and ncclRecv: "too old" is the useful
// answer there, not "missing ncclSend".
#pragma once
#include <cstddef>
#include <string>

namespace moe::comm::nccl {

// ---- the ABI, from nccl.h --------------------------------------------------------
constexpr size_t kUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
struct UniqueId {
  char internal[kUniqueIdBytes];
};
static_assert(sizeof(UniqueId) == kUniqueIdBytes, "ncclUniqueId is 128 bytes, passed by value");

struct OpaqueComm;  // struct ncclComm
using Comm = OpaqueComm*;

// ncclResult_t
enum Result : int {
  kSuccess = 0,
  kUnhandledCudaError = 1,
  kSystemError = 2,
  kInternalError = 3,
  kInvalidArgument = 4,
  kInvalidUsage = 5,
  kRemoteError = 6,  // >= 2.12
  kInProgress = 7,   // >= 2.14, non-blocking communicators
  kTimeout = 8,      // recent versions
};

// ncclDataType_t
enum DataType : int {
  kInt8 = 0,
  kUint8 = 1,
  kInt32 = 2,
  kUint32 = 3,
  kInt64 = 4,
  kUint64 = 5,
  kFloat16 = 6,
  kFloat32 = 7,
  kFloat64 = 8,
  kBfloat16 = 9,  // >= 2.10.3 (and a library built with CUDA >= 11)
};

// ncclRedOp_t
enum RedOp : int { kSum = 0, kProd = 1, kMax = 2, kMin = 3, kAvg = 4 /* >= 2.10 */ };

// ncclConfig_t as NCCL 2.14 declared it: NCCL reads min(size, its own size)
// bytes and takes the fields that the declared version has; everything later
// keeps its default. Only `blocking` is set (0: non-blocking, so that every
// call returns and a hung one can be aborted).
struct ConfigV21400 {
  size_t size;
  unsigned int magic;    // 0xcafebeef (NCCL_API_MAGIC)
  unsigned int version;  // the version whose layout this is: 21400
  int blocking;
};
constexpr unsigned int kConfigMagic = 0xcafebeef;
constexpr unsigned int kConfigVersion = 21400;

using CudaStream = void*;  // cudaStream_t

struct Api {
  Result (*GetVersion)(int* version) = nullptr;
  Result (*GetUniqueId)(UniqueId* id) = nullptr;
  Result (*CommInitRank)(Comm* comm, int nranks, UniqueId id, int rank) = nullptr;
  Result (*CommAbort)(Comm comm) = nullptr;
  Result (*CommDestroy)(Comm comm) = nullptr;
  Result (*CommGetAsyncError)(Comm comm, Result* async_error) = nullptr;
  const char* (*GetErrorString)(Result result) = nullptr;
  Result (*GroupStart)() = nullptr;
  Result (*GroupEnd)() = nullptr;
  Result (*Send)(const void* buf, size_t count, DataType type, int peer, Comm comm, CudaStream stream) = nullptr;
  Result (*Recv)(void* buf, size_t count, DataType type, int peer, Comm comm, CudaStream stream) = nullptr;
  Result (*AllReduce)(const void* send, void* recv, size_t count, DataType type, RedOp op, Comm comm,
                      CudaStream stream) = nullptr;
  Result (*Broadcast)(const void* send, void* recv, size_t count, DataType type, int root, Comm comm,
                      CudaStream stream) = nullptr;

  // Optional: present in newer versions, used when found.
  Result (*CommInitRankConfig)(Comm* comm, int nranks, UniqueId id, int rank,
                               ConfigV21400* config) = nullptr;  // >= 2.14
  const char* (*GetLastError)(Comm comm) = nullptr;              // >= 2.13
};

// ---- versions ------------------------------------------------------------------------
struct Version {
  int major = 0, minor = 0, patch = 0;
};
// ncclGetVersion's code: major*10000 + minor*100 + patch from 2.9 on,
// major*1000 + minor*100 + patch before (NCCL_VERSION in nccl.h).
Version decode_version(int code);
std::string version_string(const Version& v);  // "2.18.1"
bool at_least(const Version& v, int major, int minor, int patch);

constexpr Version kMinVersion{2, 7, 3};    // ncclSend / ncclRecv
constexpr Version kBf16Version{2, 10, 3};  // ncclBfloat16

// ---- what was found ------------------------------------------------------------------------
struct Status {
  bool available = false;      // every check passed: NcclComm can be made
  bool loaded = false;         // checks 1-4 passed (the library is usable, a device aside)
  std::string version;         // "2.18.1"; empty when unknown
  int version_code = 0;        // as ncclGetVersion returned it
  std::string library;         // the file opened, or the name tried
  std::string reason;          // why not available; empty when available
  bool supports_bf16 = false;  // version >= 2.10.3
  bool non_blocking = false;   // ncclCommInitRankConfig found: init and calls can be aborted
};

// Computed once per process, on first use; never throws.
const Status& status();

// The loaded functions; ERR_MOE_NCCL_UNAVAILABLE with the status's reason
// unless status().available.
const Api& api();

// "ncclRemoteError (6): remote process exited or there was a network error", using
// ncclGetErrorString when the library is loaded.
std::string describe(Result r);

}  // namespace moe::comm::nccl
