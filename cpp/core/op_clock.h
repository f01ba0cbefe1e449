// Native time per op: each CPU op charges its wall time on the stream to a
// named counter (calls and nanoseconds, summed since the last reset), so a
// profile can say where a layer step's time goes inside the core
// (`moe-ep bench layer --profile`).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

struct OpTime {
  std::string name;
  int64_t calls = 0;
  int64_t nanoseconds = 0;
};

// Adds one call of `ns` to the counter `name` (a string literal: kept by pointer).
void op_clock_add(const char* name, int64_t ns);
// Every counter with a call since the last reset, in the order first used.
std::vector<OpTime> op_times();
void op_times_reset();

// Charges its own lifetime to `name`.
class OpTimer {
 public:
  explicit OpTimer(const char* name) : name_(name), start_(std::chrono::steady_clock::now()) {}
  ~OpTimer() {
    op_clock_add(
        name_, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count());
  }
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  const char* name_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace moe
