#include "device_checks.h"

namespace moe {

uint32_t CheckRegistry::tag_of(uint64_t seq) {
  // 2^32 - 1 tags before the low bits repeat; seq 2^32 would give 0, which
  // means "nothing found", so those steps are skipped by add().
  return static_cast<uint32_t>(seq);
}

uint32_t CheckRegistry::add(Code code, std::string before, std::string after) {
  if (tag_of(next_) == 0) ++next_;
  const uint64_t seq = next_++;
  checks_.emplace(seq, Check{code, std::move(before), std::move(after)});
  while (checks_.size() > capacity_) checks_.erase(checks_.begin());
  return tag_of(seq);
}

std::optional<Error> CheckRegistry::settle(uint32_t tag, int64_t detail, uint64_t mark) {
  std::optional<Error> err;
  if (tag != 0) {
    // At most `capacity_` checks are held, far fewer than 2^32, so the low bits name one.
    for (auto it = checks_.rbegin(); it != checks_.rend(); ++it) {
      if (tag_of(it->first) != tag) continue;
      err.emplace(it->second.code, it->second.before + std::to_string(detail) + it->second.after);
      break;
    }
    if (!err)
      err.emplace(Code::Internal, "a GPU kernel reported bad data (check tag " + std::to_string(tag) + ", detail " +
                                      std::to_string(detail) +
                                      ") for an op no longer recorded: synchronise more often than every " +
                                      std::to_string(capacity_) + " checks to keep the op's name");
  }
  checks_.erase(checks_.begin(), checks_.upper_bound(mark));
  return err;
}

}  // namespace moe
