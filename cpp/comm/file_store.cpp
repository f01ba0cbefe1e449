#include "file_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <thread>

#include "../core/error.h"

namespace moe::comm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kEntryMagic[4] = {'M', 'O', 'E', '1'};
constexpr size_t kHexKeyMax = 100;  // "k" + 200 hex digits stays under NAME_MAX (255)

std::string errno_text(int err) { return std::strerror(err); }

// mkdir -p; the last component gets `last_mode`.
void make_dirs(const std::string& path, mode_t last_mode) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    std::string part = path.substr(0, pos);
    if (part.empty() || part.back() == '/') continue;
    mode_t mode = pos == path.size() ? last_mode : 0777;
    if (::mkdir(part.c_str(), mode) != 0 && errno != EEXIST) {
      fail(Code::Value, "file store: cannot create the directory " + part + ": " + errno_text(errno));
    }
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    fail(Code::Value, "file store: " + path + " is not a directory");
  }
}

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// An exclusive flock on the run's lock file, held for its scope. flock locks
// belong to the open file description, so threads of one process exclude each
// other as well as other processes. The last store of a run renames the
// directory away under this lock, so a lock taken on a file that is no longer
// at its path is dropped and taken again; `create` remakes a directory that
// went, otherwise held() is false.
class DirLock {
 public:
  DirLock(const std::string& dir, bool create) {
    const std::string path = dir + "/.lock";
    for (int attempt = 0; attempt < 100; ++attempt) {
      int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0 && errno == ENOENT) {
        if (!create) return;
        make_dirs(dir, 0700);
        continue;
      }
      if (fd < 0) fail(Code::Internal, "file store: cannot open " + path + ": " + errno_text(errno));
      while (::flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
          int err = errno;
          ::close(fd);
          fail(Code::Internal, "file store: cannot lock " + path + ": " + errno_text(err));
        }
      }
      struct stat locked, current;
      if (::fstat(fd, &locked) == 0 && ::stat(path.c_str(), &current) == 0 && locked.st_ino == current.st_ino &&
          locked.st_dev == current.st_dev) {
        fd_ = fd;
        return;
      }
      ::close(fd);
    }
    fail(Code::Internal, "file store: could not lock " + path + " (its directory keeps being replaced)");
  }
  ~DirLock() {
    if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the flock
  }
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

void write_all(int fd, const uint8_t* data, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(Code::Internal, "file store: cannot write " + path + ": " + errno_text(errno));
    }
    data += w;
    n -= size_t(w);
  }
}

// Writes a small file whole: a temporary file renamed into place.
void write_file(const std::string& dir, const std::string& name, const std::string& text, uint64_t nonce) {
  std::string path = dir + "/" + name;
  std::string temp = dir + "/.tmp-" + std::to_string(::getpid()) + "-r" + std::to_string(nonce);
  FdGuard fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) fail(Code::Internal, "file store: cannot create " + temp + ": " + errno_text(errno));
  try {
    write_all(fd.get(), reinterpret_cast<const uint8_t*>(text.data()), text.size(), temp);
    if (::rename(temp.c_str(), path.c_str()) != 0) {
      fail(Code::Internal, "file store: cannot rename " + temp + " to " + path + ": " + errno_text(errno));
    }
  } catch (...) {
    ::unlink(temp.c_str());
    throw;
  }
}

// The run's reference counts (.refs): stores opened and closed, distinct ranks that opened one.
struct Refs {
  long long opened = 0, closed = 0, ranks = 0;
};

Refs read_refs(const std::string& dir) {
  Refs r;
  std::string path = dir + "/.refs";
  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return r;
    fail(Code::Internal, "file store: cannot open " + path + ": " + errno_text(errno));
  }
  char buf[128] = {0};
  ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
  if (n < 0 || std::sscanf(buf, "%lld %lld %lld", &r.opened, &r.closed, &r.ranks) != 3 || r.opened < 0 ||
      r.closed < 0 || r.ranks < 0) {
    fail(Code::Value, "file store: " + path + " is not a moe-ep reference count file");
  }
  return r;
}

std::string refs_text(const Refs& r) {
  return std::to_string(r.opened) + " " + std::to_string(r.closed) + " " + std::to_string(r.ranks) + "\n";
}

// Removes a directory of plain files (a run's directory, renamed away).
void remove_files_and_dir(const std::string& dir) {
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) ::unlinkat(::dirfd(d), e->d_name, 0);
    }
    ::closedir(d);
  }
  ::rmdir(dir.c_str());
}

}  // namespace

FileStore::FileStore(const std::string& dir, const StoreOptions& opts)
    : root_(dir), run_id_(opts.run_id), rank_(opts.rank), world_size_(opts.world_size), timeout_(opts.timeout) {
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
  dir_ = (root_ == "/" ? "" : root_) + "/" + run_id_;
  make_dirs(root_, 0777);
  make_dirs(dir_, 0700);
  enter();
}

FileStore::~FileStore() { close(); }

void FileStore::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
  }
  closed_cv_.notify_all();
  try {
    leave();
  } catch (const std::exception&) {
    // close never throws; a cleanup that failed leaves the run's directory behind
  }
}

void FileStore::enter() {
  DirLock lock(dir_, true);
  Refs r = read_refs(dir_);
  std::string marker = dir_ + "/.rank-" + std::to_string(rank_);
  int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::close(fd);
    ++r.ranks;
  } else if (errno != EEXIST) {
    fail(Code::Internal, "file store: cannot create " + marker + ": " + errno_text(errno));
  }
  ++r.opened;
  write_file(dir_, ".refs", refs_text(r), temp_counter_++);
}

void FileStore::leave() {
  std::string gone;
  {
    DirLock lock(dir_, false);
    if (!lock.held()) return;  // removed by someone else
    Refs r = read_refs(dir_);
    ++r.closed;
    if (r.ranks >= world_size_ && r.closed >= r.opened) {
      // Every rank has opened a store of the run and every store is closed: no one needs a key.
      gone = (root_ == "/" ? "" : root_) + "/.gone-" + run_id_ + "-" + std::to_string(::getpid()) + "-" +
             std::to_string(temp_counter_++);
      if (::rename(dir_.c_str(), gone.c_str()) != 0) gone.clear();
    }
    if (gone.empty()) write_file(dir_, ".refs", refs_text(r), temp_counter_++);
  }
  if (!gone.empty()) remove_files_and_dir(gone);
}

void FileStore::check_open(const char* op) const {
  if (closed_) fail(Code::Disposed, std::string("store ") + op + ": the store is closed");
}

void FileStore::gone_error(const char* op) const {
  check_open(op);
  fail(Code::Internal, std::string("store ") + op + ": the run's directory " + dir_ + " was removed while in use");
}

std::string FileStore::file_name(const std::string& key) {
  static const char* hex = "0123456789abcdef";
  std::string name;
  if (key.size() <= kHexKeyMax) {
    name = "k";
    for (unsigned char c : key) {
      name += hex[c >> 4];
      name += hex[c & 15];
    }
    return name;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, "h%016llx-%zu", static_cast<unsigned long long>(fnv1a64(key)), key.size());
  return buf;
}

bool FileStore::read_entry(const std::string& key, Bytes* value) const {
  std::string path = dir_ + "/" + file_name(key);
  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return false;
    fail(Code::Internal, "file store: cannot open " + path + ": " + errno_text(errno));
  }
  if (!value && key.size() <= kHexKeyMax) return true;  // the name alone identifies the key
  Bytes data;
  uint8_t buf[65536];
  for (;;) {
    ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(Code::Internal, "file store: cannot read " + path + ": " + errno_text(errno));
    }
    if (r == 0) break;
    data.insert(data.end(), buf, buf + r);
    if (data.size() > 8 + kMaxKeyBytes + kMaxValueBytes) break;
  }
  // Entry: "MOE1", u32 key length (little-endian), key, value.
  auto malformed = [&] { fail(Code::Value, "file store: " + path + " is not a moe-ep store entry"); };
  if (data.size() < 8 || std::memcmp(data.data(), kEntryMagic, 4) != 0) malformed();
  uint32_t key_len = uint32_t(data[4]) | uint32_t(data[5]) << 8 | uint32_t(data[6]) << 16 | uint32_t(data[7]) << 24;
  if (key_len > kMaxKeyBytes || data.size() < 8 + size_t(key_len) || data.size() - 8 - key_len > kMaxValueBytes)
    malformed();
  if (key_len != key.size() || std::memcmp(data.data() + 8, key.data(), key_len) != 0) {
    fail(Code::Internal, "file store: " + path + " holds another key than " + describe_key(key) + " (hash collision)");
  }
  if (value) value->assign(data.begin() + 8 + key_len, data.end());
  return true;
}

void FileStore::write_entry(const std::string& key, const Bytes& value) {
  std::string path = dir_ + "/" + file_name(key);
  std::string temp = dir_ + "/.tmp-" + std::to_string(::getpid()) + "-" + std::to_string(temp_counter_++) + "-" +
                     std::to_string(std::hash<std::thread::id>()(std::this_thread::get_id()));
  FdGuard fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (fd.get() < 0) fail(Code::Internal, "file store: cannot create " + temp + ": " + errno_text(errno));
  try {
    uint8_t header[8];
    std::memcpy(header, kEntryMagic, 4);
    uint32_t n = uint32_t(key.size());
    for (int i = 0; i < 4; ++i) header[4 + i] = uint8_t(n >> (8 * i));
    write_all(fd.get(), header, 8, temp);
    write_all(fd.get(), reinterpret_cast<const uint8_t*>(key.data()), key.size(), temp);
    write_all(fd.get(), value.data(), value.size(), temp);
    if (::rename(temp.c_str(), path.c_str()) != 0) {
      fail(Code::Internal, "file store: cannot rename " + temp + " to " + path + ": " + errno_text(errno));
    }
  } catch (...) {
    ::unlink(temp.c_str());
    throw;
  }
}

bool FileStore::wait_for(const char* op, const std::string& key, Clock::time_point deadline, Bytes* value) {
  auto interval = Millis(1);
  for (;;) {
    check_open(op);
    if (read_entry(key, value)) return true;
    auto now = Clock::now();
    if (now >= deadline) return false;
    std::unique_lock<std::mutex> lock(mu_);
    closed_cv_.wait_until(lock, std::min(deadline, now + interval), [&] { return closed_.load(); });
    interval = std::min(interval * 2, Millis(20));
  }
}

void FileStore::set(const std::string& key, const Bytes& value) {
  check_open("set");
  check_key(key, "set");
  check_value(value, "set");
  DirLock lock(dir_, false);  // orders set against a concurrent add of the same key
  if (!lock.held()) gone_error("set");
  write_entry(key, value);
}

Bytes FileStore::get(const std::string& key, Millis timeout) {
  check_open("get");
  check_key(key, "get");
  Bytes value;
  if (!wait_for("get", key, deadline_after(timeout), &value)) {
    fail(Code::Timeout, "store get: key " + describe_key(key) + " was not set within " +
                            std::to_string(timeout.count()) + " ms (" + url() + ", run " + run_id_ + ")");
  }
  return value;
}

void FileStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  check_open("wait");
  for (const auto& key : keys) check_key(key, "wait");
  // Keys are never removed, so waiting for each in turn waits for all.
  auto deadline = deadline_after(timeout);
  for (const auto& key : keys) {
    if (!wait_for("wait", key, deadline, nullptr)) {
      fail(Code::Timeout, "store wait: key " + describe_key(key) + " was not set within " +
                              std::to_string(timeout.count()) + " ms (" + url() + ", run " + run_id_ + ")");
    }
  }
}

bool FileStore::check(const std::vector<std::string>& keys) {
  check_open("check");
  for (const auto& key : keys) check_key(key, "check");
  for (const auto& key : keys) {
    if (!read_entry(key, nullptr)) return false;
  }
  return true;
}

int64_t FileStore::add(const std::string& key, int64_t delta) {
  check_open("add");
  check_key(key, "add");
  DirLock lock(dir_, false);
  if (!lock.held()) gone_error("add");
  Bytes current;
  int64_t value = read_entry(key, &current) ? parse_counter(current, key) : 0;
  value = add_counter(value, delta, key);
  write_entry(key, format_counter(value));
  return value;
}

}  // namespace moe::comm
