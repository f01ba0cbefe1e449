#include "op_clock.h"

#include <cstring>
#include <mutex>

namespace moe {
namespace {

struct Counter {
  const char* name;
  int64_t calls;
  int64_t ns;
};

std::mutex mu;
std::vector<Counter>& counters() {
  static auto* c = new std::vector<Counter>();  // never destroyed: ops may run during exit
  return *c;
}

}  // namespace

void op_clock_add(const char* name, int64_t ns) {
  std::lock_guard<std::mutex> lock(mu);
  for (Counter& c : counters())
    if (c.name == name || std::strcmp(c.name, name) == 0) {
      ++c.calls;
      c.ns += ns;
      return;
    }
  counters().push_back({name, 1, ns});
}

std::vector<OpTime> op_times() {
  std::lock_guard<std::mutex> lock(mu);
  std::vector<OpTime> out;
  for (const Counter& c : counters())
    if (c.calls) out.push_back({c.name, c.calls, c.ns});
  return out;
}

void op_times_reset() {
  std::lock_guard<std::mutex> lock(mu);
  for (Counter& c : counters()) c.calls = c.ns = 0;
}

}  // namespace moe
