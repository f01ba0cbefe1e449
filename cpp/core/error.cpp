#include "error.h"

namespace moe {

const char* code_name(Code code) {
  switch (code) {
    case Code::Shape:
      return "ERR_MOE_SHAPE";
    case Code::Dtype:
      return "ERR_MOE_DTYPE";
    case Code::Device:
      return "ERR_MOE_DEVICE";
    case Code::Disposed:
      return "ERR_MOE_DISPOSED";
    case Code::Value:
      return "ERR_MOE_VALUE";
    case Code::NonFinite:
      return "ERR_MOE_NONFINITE";
    case Code::CudaUnavailable:
      return "ERR_MOE_CUDA_UNAVAILABLE";
    case Code::Unsupported:
      return "ERR_MOE_UNSUPPORTED";
    case Code::Internal:
      return "ERR_MOE_INTERNAL";
    case Code::Timeout:
      return "ERR_MOE_TIMEOUT";
    case Code::PeerLost:
      return "ERR_MOE_PEER_LOST";
    case Code::CountMismatch:
      return "ERR_MOE_COUNT_MISMATCH";
    case Code::NcclUnavailable:
      return "ERR_MOE_NCCL_UNAVAILABLE";
  }
  return "ERR_MOE_INTERNAL";
}

}  // namespace moe
