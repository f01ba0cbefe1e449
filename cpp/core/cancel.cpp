#include "cancel.h"

namespace moe {
namespace {
thread_local const std::atomic<bool>* tl_flag = nullptr;
}  // namespace

bool work_cancelled() { return tl_flag && tl_flag->load(std::memory_order_relaxed); }

const std::atomic<bool>* current_cancel_flag() { return tl_flag; }

CancelScope::CancelScope(const std::atomic<bool>* flag) : saved_(tl_flag) { tl_flag = flag; }
CancelScope::~CancelScope() { tl_flag = saved_; }

}  // namespace moe
