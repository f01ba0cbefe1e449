#include "tcp_store.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "../core/error.h"
#include "net.h"
#include "tcp_wire.h"

namespace moe::comm {
namespace {

using Clock = std::chrono::steady_clock;

// Text from the server, shown to the user as data: printable ASCII only, bounded.
std::string printable(const Bytes& text) {
  std::string out;
  for (size_t i = 0; i < text.size() && out.size() < 400; ++i) {
    char c = char(text[i]);
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out;
}

Bytes frame(uint16_t op, const std::string& key, const Bytes& value) {
  wire::Header h;
  h.op = op;
  h.key_len = uint32_t(key.size());
  h.value_len = uint32_t(value.size());
  Bytes out(wire::kHeaderBytes + key.size() + value.size());
  wire::encode(h, out.data());
  std::memcpy(out.data() + wire::kHeaderBytes, key.data(), key.size());
  if (!value.empty()) std::memcpy(out.data() + wire::kHeaderBytes + key.size(), value.data(), value.size());
  return out;
}

enum class ReplyStatus { Ok, Timeout, Closed, Malformed };

ReplyStatus read_reply(int fd, Clock::time_point deadline, uint16_t* op, Bytes* value) {
  uint8_t hb[wire::kHeaderBytes];
  net::Io r = net::recv_all(fd, hb, sizeof hb, deadline);
  if (r != net::Io::Ok) return r == net::Io::Timeout ? ReplyStatus::Timeout : ReplyStatus::Closed;
  wire::Header h = wire::decode(hb);
  if (!wire::valid_reply(h)) return ReplyStatus::Malformed;
  value->resize(h.value_len);
  r = net::recv_all(fd, value->data(), h.value_len, deadline);
  if (r != net::Io::Ok) return r == net::Io::Timeout ? ReplyStatus::Timeout : ReplyStatus::Closed;
  *op = h.op;
  return ReplyStatus::Ok;
}

}  // namespace

TcpStore::TcpStore(const std::string& host, int port, const StoreOptions& opts)
    : host_(host), port_(port), run_id_(opts.run_id), timeout_(opts.timeout) {
  if (opts.rank == 0) {
    server_ = std::make_unique<TcpServer>(host, port, run_id_, opts.max_bytes);
    port_ = server_->port();
    addr_ = server_->address();
    resolved_ = true;
  }
}

TcpStore::~TcpStore() { close(); }

void TcpStore::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    for (int fd : idle_) ::close(fd);
    idle_.clear();
    // Wake calls blocked on their sockets; they close their own descriptors.
    for (int fd : busy_) ::shutdown(fd, SHUT_RDWR);
  }
  cv_.notify_all();
  if (server_) server_->stop();
}

void TcpStore::check_open(const char* what) const {
  if (closed_) fail(Code::Disposed, std::string("store ") + what + ": the store is closed");
}

void TcpStore::release(int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  busy_.erase(fd);
  if (closed_) {
    ::close(fd);
  } else {
    idle_.push_back(fd);
  }
}

void TcpStore::discard(int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  busy_.erase(fd);
  ::close(fd);
}

int TcpStore::connect_once(std::string* error) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    *error = std::string("socket(): ") + std::strerror(errno);
    return -1;
  }
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sa.sin_addr = addr_;
  }
  sa.sin_port = htons(uint16_t(port_));
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  if (rc != 0 && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    rc = ::poll(&p, 1, 1000);  // one attempt waits at most a second
    int err = ETIMEDOUT;
    socklen_t len = sizeof err;
    if (rc > 0) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    errno = err;
    rc = err == 0 ? 0 : -1;
  }
  if (rc != 0) {
    *error = std::strerror(errno);
    ::close(fd);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one);
  return fd;
}

int TcpStore::acquire(const char* what, Clock::time_point deadline, Millis timeout) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    check_open(what);
    if (!idle_.empty()) {
      int fd = idle_.back();
      idle_.pop_back();
      busy_.insert(fd);
      return fd;
    }
  }
  bool resolved;
  {
    std::lock_guard<std::mutex> lock(mu_);
    resolved = resolved_;
  }
  if (!resolved) {
    in_addr a = net::resolve_ipv4(host_);  // outside the lock: a name lookup may take a while
    std::lock_guard<std::mutex> lock(mu_);
    addr_ = a;
    resolved_ = true;
  }
  std::string last_error = "no attempt";
  auto delay = Millis(10);
  for (;;) {
    check_open(what);
    int fd = connect_once(&last_error);
    if (fd >= 0) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (closed_) {
          ::close(fd);
          check_open(what);
        }
        busy_.insert(fd);
      }
      Bytes hello = frame(wire::kHello, run_id_, {});
      uint16_t op = 0;
      Bytes text;
      net::Io sent = net::send_all(fd, hello.data(), hello.size(), deadline);
      ReplyStatus st = sent == net::Io::Ok ? read_reply(fd, deadline, &op, &text)
                                           : (sent == net::Io::Timeout ? ReplyStatus::Timeout : ReplyStatus::Closed);
      if (st == ReplyStatus::Ok && op == wire::kOk) return fd;
      discard(fd);
      check_open(what);
      if (st == ReplyStatus::Ok && op == wire::kRefused) {
        fail(Code::Value, "store " + std::string(what) + ": the server at " + url() + " refused this client: " +
                              printable(text) + "; every rank must use the same MOE_EP_RUN_ID / runId");
      }
      last_error = st == ReplyStatus::Timeout  ? "no answer to HELLO"
                   : st == ReplyStatus::Closed ? "connection closed during HELLO"
                                               : "malformed answer to HELLO";
    }
    auto now = Clock::now();
    if (now >= deadline) {
      fail(Code::Timeout, "store " + std::string(what) + ": could not reach the store server at " + url() + " within " +
                              std::to_string(timeout.count()) + " ms (" + last_error +
                              "); is rank 0 running with the same MASTER_ADDR and MASTER_PORT?");
    }
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_until(lock, std::min(deadline, now + delay), [&] { return closed_.load(); });
    delay = std::min(delay * 2, Millis(250));
  }
}

TcpStore::Reply TcpStore::request(const char* what, uint16_t op, const std::string& key, const Bytes& value,
                                  Clock::time_point deadline, Millis timeout) {
  int fd = acquire(what, deadline, timeout);
  Bytes msg = frame(op, key, value);
  Reply reply;
  net::Io sent = net::send_all(fd, msg.data(), msg.size(), deadline);
  ReplyStatus st = sent == net::Io::Ok ? read_reply(fd, deadline, &reply.op, &reply.value)
                                       : (sent == net::Io::Timeout ? ReplyStatus::Timeout : ReplyStatus::Closed);
  if (st == ReplyStatus::Ok && (reply.op == wire::kOk || reply.op == wire::kValue)) {
    release(fd);
    return reply;
  }
  if (st == ReplyStatus::Ok && reply.op == wire::kError) {
    // The server refused the operation itself; past a bound it also closes the connection.
    discard(fd);
    fail(Code::Value, printable(reply.value));
  }
  // A connection that timed out or broke holds a half-done exchange: never reuse it.
  discard(fd);
  check_open(what);
  std::string where = " (" + url() + ", run " + run_id_ + ")";
  switch (st) {
    case ReplyStatus::Timeout:
      if (op == wire::kGet || op == wire::kWait) {
        fail(Code::Timeout, "store " + std::string(what) + ": key " + describe_key(key) + " was not set within " +
                                std::to_string(timeout.count()) + " ms" + where);
      }
      fail(Code::Timeout, "store " + std::string(what) + ": no answer from the store server within " +
                              std::to_string(timeout.count()) + " ms" + where);
    case ReplyStatus::Closed:
      fail(Code::PeerLost,
           "store " + std::string(what) + ": the store server closed the connection" + where + "; did rank 0 exit?");
    case ReplyStatus::Malformed:
      fail(Code::PeerLost, "store " + std::string(what) + ": malformed reply from the store server" + where);
    case ReplyStatus::Ok:
      break;
  }
  fail(Code::PeerLost, "store " + std::string(what) + ": unexpected reply from the store server" + where);
}

void TcpStore::set(const std::string& key, const Bytes& value) {
  check_open("set");
  check_key(key, "set");
  check_value(value, "set");
  request("set", wire::kSet, key, value, deadline_after(timeout_), timeout_);
}

Bytes TcpStore::get(const std::string& key, Millis timeout) {
  check_open("get");
  check_key(key, "get");
  Reply r = request("get", wire::kGet, key, {}, deadline_after(timeout), timeout);
  if (r.op != wire::kValue) fail(Code::PeerLost, "store get: unexpected reply from the store server at " + url());
  return std::move(r.value);
}

void TcpStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  check_open("wait");
  for (const auto& key : keys) check_key(key, "wait");
  // Keys are never removed, so waiting for each in turn waits for all.
  auto deadline = deadline_after(timeout);
  for (const auto& key : keys) request("wait", wire::kWait, key, {}, deadline, timeout);
}

bool TcpStore::check(const std::vector<std::string>& keys) {
  check_open("check");
  for (const auto& key : keys) check_key(key, "check");
  auto deadline = deadline_after(timeout_);
  for (const auto& key : keys) {
    Reply r = request("check", wire::kCheck, key, {}, deadline, timeout_);
    if (r.op != wire::kValue || r.value.size() != 1) {
      fail(Code::PeerLost, "store check: unexpected reply from the store server at " + url());
    }
    if (r.value[0] == 0) return false;
  }
  return true;
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  check_open("add");
  check_key(key, "add");
  Bytes d(8);
  wire::put_i64(delta, d.data());
  Reply r = request("add", wire::kAdd, key, d, deadline_after(timeout_), timeout_);
  if (r.op != wire::kValue || r.value.size() != 8) {
    fail(Code::PeerLost, "store add: unexpected reply from the store server at " + url());
  }
  return wire::get_i64(r.value.data());
}

}  // namespace moe::comm
