#include "shm_exchange.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <random>

namespace moe::comm {

// The first bytes of a segment. `posted` is the futex word the peers wait on.
struct ShmExchange::Header {
  uint32_t posted;  // the sequence number of the rows in place
  uint32_t failed;  // 1 once the owner's group failed
  int64_t pid;      // the owner's process
  int64_t size;     // ranks in the group
  int64_t reserved[5];
  int64_t offsets[1];  // [size]: where each peer's piece starts in the row area
};

namespace {

constexpr int64_t kPage = 4096;
constexpr int kSpins = 4000;           // polls before sleeping on the futex (a few microseconds)
constexpr int64_t kSleepNs = 2000000;  // futex sleeps between checks of the peer and the deadline

std::string path_of(const std::string& name) { return "/dev/shm" + name; }

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

long futex(uint32_t* word, int op, uint32_t value, const timespec* timeout) {
  return syscall(SYS_futex, word, op, value, timeout, nullptr, 0);
}

// Whether no process pid exists (from this pid namespace's view).
bool process_gone(int64_t pid) { return kill(pid_t(pid), 0) != 0 && errno == ESRCH; }

// Whether process pid has ended: gone, or a zombie its parent has not reaped yet.
bool process_ended(int64_t pid) {
  if (process_gone(pid)) return true;
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%lld/stat", static_cast<long long>(pid));
  FILE* f = std::fopen(path, "r");
  if (!f) return false;  // no /proc: kill's answer stands
  char buf[512];
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* close = std::strrchr(buf, ')');  // "pid (comm) S ...": comm may hold spaces and parentheses
  return close && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X');
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

// The header with its offsets, in whole pages: the rows start on a page.
int64_t ShmExchange::header_bytes(int size) {
  const int64_t raw = int64_t(offsetof(Header, offsets)) + 8 * int64_t(size);
  return (raw + kPage - 1) / kPage * kPage;
}

bool shm_enabled() {
  const char* v = std::getenv("MOE_EP_SHM");
  return !(v && std::strcmp(v, "0") == 0);
}

ShmExchange::Header* ShmExchange::header(int p) const { return static_cast<Header*>(maps_[size_t(p)].base); }
char* ShmExchange::rows(int p) const { return static_cast<char*>(maps_[size_t(p)].base) + header_bytes(size_); }

std::unique_ptr<ShmExchange> ShmExchange::create(int rank, int size, std::string* why) {
  std::unique_ptr<ShmExchange> s(new ShmExchange(rank, size));
  s->maps_.resize(size_t(size));
  std::random_device rd;
  char name[64];
  std::snprintf(name, sizeof name, "/moe-ep-%ld-%d-%08x%08x", long(getpid()), rank, unsigned(rd()), unsigned(rd()));
  s->name_ = name;
  const std::string path = path_of(s->name_);
  const int fd = open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    *why = errno_text(("open " + path).c_str());
    return nullptr;
  }
  s->linked_ = true;
  Mapping& m = s->maps_[size_t(rank)];
  m.fd = fd;
  const int64_t head = header_bytes(size);
  if (ftruncate(fd, off_t(head + kCapacity)) != 0) {
    *why = errno_text(("ftruncate " + path).c_str());
    return nullptr;
  }
  if (fallocate(fd, 0, 0, off_t(head)) != 0) {
    *why = errno_text(("fallocate " + path).c_str());
    return nullptr;
  }
  void* base = mmap(nullptr, size_t(head + kCapacity), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (base == MAP_FAILED) {
    *why = errno_text(("mmap " + path).c_str());
    return nullptr;
  }
  m.base = base;
  Header* h = s->header(rank);
  h->posted = 0;
  h->failed = 0;
  h->pid = int64_t(getpid());
  h->size = size;
  return s;
}

ShmExchange::~ShmExchange() {
  const size_t total = size_t(header_bytes(size_) + kCapacity);
  for (Mapping& m : maps_) {
    if (m.base) munmap(m.base, total);
    if (m.fd >= 0) close(m.fd);
  }
  unlink();
}

bool ShmExchange::attach(const std::vector<std::string>& names, std::string* why) {
  const size_t total = size_t(header_bytes(size_) + kCapacity);
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    const std::string path = path_of(names[size_t(p)]);
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      *why = errno_text(("open " + path).c_str());
      return false;
    }
    maps_[size_t(p)].fd = fd;
    void* base = mmap(nullptr, total, PROT_READ, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (base == MAP_FAILED) {
      *why = errno_text(("mmap " + path).c_str());
      return false;
    }
    maps_[size_t(p)].base = base;
    const Header* h = header(p);
    // A peer whose process this one cannot see (another pid namespace) could not be watched while waiting.
    if (h->size != size_ || h->pid <= 0 || process_gone(h->pid)) {
      *why = "the process of rank " + std::to_string(p) + " is not visible from here";
      return false;
    }
  }
  return true;
}

void ShmExchange::unlink() {
  if (!linked_) return;
  ::unlink(path_of(name_).c_str());
  linked_ = false;
}

bool ShmExchange::reserve(int64_t bytes) {
  if (bytes <= reserved_) return true;
  if (bytes > kCapacity) return false;
  // Whole megabytes, so that slowly growing exchanges do not call fallocate every time.
  const int64_t want = std::min(kCapacity, (bytes + (int64_t(1) << 20) - 1) >> 20 << 20);
  if (fallocate(maps_[size_t(rank_)].fd, 0, off_t(header_bytes(size_) + reserved_), off_t(want - reserved_)) != 0)
    return false;
  reserved_ = want;
  return true;
}

void ShmExchange::post(uint32_t seq, const char* src, const std::vector<std::vector<Piece>>& pieces) {
  Header* h = header(rank_);
  char* area = rows(rank_);
  int64_t at = 0;
  for (int p = 0; p < size_; ++p) {
    if (p == rank_) continue;
    h->offsets[p] = at;
    for (const Piece& piece : pieces[size_t(p)]) {
      if (piece.bytes > 0) std::memcpy(area + at, src + piece.at, size_t(piece.bytes));
      at += piece.bytes;
    }
  }
  __atomic_store_n(&h->posted, seq, __ATOMIC_RELEASE);
  futex(&h->posted, FUTEX_WAKE, INT_MAX, nullptr);
}

ShmExchange::Outcome ShmExchange::receive(int p, uint32_t seq, char* dst, const std::vector<Piece>& pieces,
                                          const Wait& wait) {
  Header* h = header(p);
  for (int i = 0;; ++i) {
    const uint32_t v = __atomic_load_n(&h->posted, __ATOMIC_ACQUIRE);
    if (v == seq) break;
    if (__atomic_load_n(&h->failed, __ATOMIC_ACQUIRE)) return Outcome::PeerFailed;
    if (i < kSpins) {
      cpu_relax();
      continue;
    }
    if (std::chrono::steady_clock::now() >= wait.deadline) return Outcome::Timeout;
    if (process_ended(h->pid)) return Outcome::PeerGone;
    if (wait.stopped && wait.stopped()) return Outcome::Stopped;
    const timespec sleep{0, long(kSleepNs)};
    futex(&h->posted, FUTEX_WAIT, v, &sleep);
  }
  int64_t bytes = 0;
  for (const Piece& piece : pieces) bytes += piece.bytes;
  const int64_t off = h->offsets[rank_];
  if (off < 0 || off > kCapacity - bytes) return Outcome::PeerFailed;
  const char* from = rows(p) + off;
  for (const Piece& piece : pieces) {
    if (piece.bytes > 0) std::memcpy(dst + piece.at, from, size_t(piece.bytes));
    from += piece.bytes;
  }
  return Outcome::Ok;
}

void ShmExchange::mark_failed() {
  Header* h = header(rank_);
  __atomic_store_n(&h->failed, 1u, __ATOMIC_RELEASE);
  futex(&h->posted, FUTEX_WAKE, INT_MAX, nullptr);
}

}  // namespace moe::comm
