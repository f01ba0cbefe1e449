#include "file_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

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
// other as well as other processes.
class DirLock {
 public:
  explicit DirLock(const std::string& dir) : fd_(::open((dir + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600)) {
    if (fd_.get() < 0) fail(Code::Internal, "file store: cannot open " + dir + "/.lock: " + errno_text(errno));
    while (::flock(fd_.get(), LOCK_EX) != 0) {
      if (errno != EINTR) fail(Code::Internal, "file store: cannot lock " + dir + "/.lock: " + errno_text(errno));
    }
  }
  ~DirLock() { ::flock(fd_.get(), LOCK_UN); }

 private:
  FdGuard fd_;
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

}  // namespace

FileStore::FileStore(const std::string& dir, const StoreOptions& opts)
    : root_(dir), run_id_(opts.run_id), timeout_(opts.timeout) {
  while (root_.size() > 1 && root_.back() == '/') root_.pop_back();
  dir_ = (root_ == "/" ? "" : root_) + "/" + run_id_;
  make_dirs(root_, 0777);
  make_dirs(dir_, 0700);
}

FileStore::~FileStore() { close(); }

void FileStore::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  closed_cv_.notify_all();
}

void FileStore::check_open(const char* op) const {
  if (closed_) fail(Code::Disposed, std::string("store ") + op + ": the store is closed");
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
  DirLock lock(dir_);  // orders set against a concurrent add of the same key
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
  DirLock lock(dir_);
  Bytes current;
  int64_t value = read_entry(key, &current) ? parse_counter(current, key) : 0;
  value = add_counter(value, delta, key);
  write_entry(key, format_counter(value));
  return value;
}

}  // namespace moe::comm
