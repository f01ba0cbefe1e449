// Errors that only GPU kernels can see (a NaN in the router's input, an index
// out of range) are tagged on the device's status word (cuda/launchers.h,
// "errors found by kernels"); this registry remembers which op and which
// check owns each tag, so the host can name them when it reads the word at
// its next synchronisation. Plain C++, no CUDA: unit-tested on any machine.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "error.h"

namespace moe {

class CheckRegistry {
 public:
  // Tags beyond `capacity` unsettled ones push out the oldest (a program that
  // never synchronises must not grow without bound).
  // first_seq: where the sequence starts (tests start it near 2^32 to see the tags wrap).
  explicit CheckRegistry(size_t capacity = 4096, uint64_t first_seq = 1) : capacity_(capacity), next_(first_seq) {}

  // A new check: when it fires, the error is `code` with the message
  // before + <detail> + after. Returns the device tag (never 0).
  uint32_t add(Code code, std::string before, std::string after);

  // The newest check registered so far (0 when none): a synchronisation that
  // starts now settles every check up to it.
  uint64_t mark() const { return next_ - 1; }

  // The status word read back as (tag, detail) by a synchronisation that
  // started at `mark`: the error of the check that fired, if any. Checks up
  // to `mark` are settled either way and forgotten.
  std::optional<Error> settle(uint32_t tag, int64_t detail, uint64_t mark);

  size_t size() const { return checks_.size(); }

 private:
  struct Check {
    Code code;
    std::string before, after;
  };
  static uint32_t tag_of(uint64_t seq);  // the low 32 bits, with 0 skipped
  size_t capacity_;
  uint64_t next_;
  std::map<uint64_t, Check> checks_;
};

}  // namespace moe
