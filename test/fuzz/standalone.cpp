// A driver for fuzz_boundary.cpp where libFuzzer is not at hand (GCC): replays
// the inputs named on the command line, then feeds seeded random and mutated
// inputs until the time is up. Input i of seed s is the same on every run; the
// input that fails is also written to ./fuzz-crash-<seed>-<i> before the
// process dies.
//   moe_ep_fuzz [--seconds N] [--seed S] [--iteration I] [corpus files or dirs...]
#include <sanitizer/common_interface_defs.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<uint8_t> current;
std::string current_name;

void dump_current() {
  std::FILE* f = std::fopen(current_name.c_str(), "wb");
  if (!f) return;
  std::fwrite(current.data(), 1, current.size(), f);
  std::fclose(f);
  std::fprintf(stderr, "fuzz: the failing input is in %s\n", current_name.c_str());
}

void on_abort(int sig) {
  dump_current();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<uint8_t> read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Input i of seed s: fresh random bytes, or a corpus entry with some bytes changed.
std::vector<uint8_t> make_input(uint64_t seed, uint64_t i, const std::vector<std::vector<uint8_t>>& corpus) {
  uint64_t state = mix(seed ^ mix(i));
  auto next = [&] { return state = mix(state); };
  std::vector<uint8_t> in;
  if (!corpus.empty() && next() % 2) {
    in = corpus[next() % corpus.size()];
    for (uint64_t k = next() % 8 + 1; k > 0 && !in.empty(); --k) in[next() % in.size()] = uint8_t(next());
    if (next() % 4 == 0) in.resize(next() % (in.size() + 16), uint8_t(next()));
  } else {
    in.resize(next() % 256);
    for (uint8_t& b : in) b = uint8_t(next());
  }
  return in;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 10;
  uint64_t seed = 1;
  long long only = -1;
  std::vector<std::vector<uint8_t>> corpus;
  std::vector<std::string> names;
  for (int a = 1; a < argc; ++a) {
    std::string arg = argv[a];
    if (arg == "--seconds" && a + 1 < argc) {
      seconds = std::atof(argv[++a]);
    } else if (arg == "--seed" && a + 1 < argc) {
      seed = std::strtoull(argv[++a], nullptr, 10);
    } else if (arg == "--iteration" && a + 1 < argc) {
      only = std::atoll(argv[++a]);
    } else if (std::filesystem::is_directory(arg)) {
      for (const auto& e : std::filesystem::directory_iterator(arg)) {
        corpus.push_back(read_file(e.path()));
        names.push_back(e.path().string());
      }
    } else {
      corpus.push_back(read_file(arg));
      names.push_back(arg);
    }
  }
  std::signal(SIGABRT, on_abort);
  __sanitizer_set_death_callback(dump_current);

  for (size_t c = 0; c < corpus.size() && only < 0; ++c) {
    current = corpus[c];
    current_name = "fuzz-crash-corpus-" + std::to_string(c);
    LLVMFuzzerTestOneInput(current.data(), current.size());
  }
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t i = only >= 0 ? uint64_t(only) : 0;
  for (;; ++i) {
    current = make_input(seed, i, corpus);
    current_name = "fuzz-crash-" + std::to_string(seed) + "-" + std::to_string(i);
    LLVMFuzzerTestOneInput(current.data(), current.size());
    if (only >= 0 || std::chrono::steady_clock::now() >= end) break;
  }
  std::printf("fuzz: %zu corpus inputs and %llu random inputs (seed %llu), no findings\n", corpus.size(),
              (unsigned long long)(only >= 0 ? 1 : i + 1), (unsigned long long)seed);
  return 0;
}
