#include "tcp_server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "../core/error.h"
#include "net.h"
#include "tcp_wire.h"

namespace moe::comm {
namespace {

using Clock = std::chrono::steady_clock;
using Value = std::shared_ptr<const Bytes>;

constexpr size_t kMaxConnections = 1024;
// A client that has not said HELLO by then is dropped, so idle strangers cannot hold slots.
constexpr auto kHelloWindow = std::chrono::seconds(10);
// The largest counter text ("-9223372036854775808"), what an ADD may store.
constexpr size_t kCounterBytes = 20;
// Log lines about dropped clients: at most kLogBurst per kLogWindow.
constexpr int kLogBurst = 20;
constexpr auto kLogWindow = std::chrono::seconds(10);

struct Conn {
  int fd = -1;
  std::string peer;  // "address:port", for the log
  Clock::time_point accepted;
  bool hello = false;
  bool dead = false;
  bool close_after_write = false;
  // The message being received: its header, then key_len bytes of key and value_len of value.
  uint8_t head[wire::kHeaderBytes] = {};
  size_t head_have = 0;
  wire::Header header;
  std::string key;
  Bytes value;
  size_t body_have = 0;
  size_t reserved = 0;      // bytes of the run's bound held for this message until it is stored
  size_t discard_left = 0;  // body bytes to read and throw away, then answer `refusal` and close
  std::string refusal;
  // The reply being sent: header and small payload, then a stored value (shared, not copied).
  std::vector<uint8_t> out;
  Value out_value;
  size_t out_sent = 0;
  uint16_t parked_op = 0;  // GET or WAIT held until its key exists
  std::string parked_key;

  size_t out_size() const { return out.size() + (out_value ? out_value->size() : 0); }
  bool busy() const { return parked_op != 0 || out_sent < out_size(); }
};

std::string peer_name(const sockaddr_in& sa) {
  return net::format_ipv4(sa.sin_addr) + ":" + std::to_string(ntohs(sa.sin_port));
}

// What a connection sent before its HELLO, for the log.
std::string pre_hello_text(const wire::Header& h) {
  if (h.magic != wire::kMagic || h.version != wire::kVersion) return "bytes that are not a moe-ep store message";
  if (h.op != wire::kHello) return "a request (op " + std::to_string(h.op) + ")";
  return "a HELLO of " + std::to_string(h.key_len) + " + " + std::to_string(h.value_len) + " bytes";
}

}  // namespace

struct TcpServer::State {
  // First, so that it outlives the values whose deleters update it.
  size_t held = 0;      // bytes of keys (with their overhead) and of live values
  size_t reserved = 0;  // bytes promised to SET / ADD messages still being received
  size_t max_bytes = 0;
  std::string run_id;
  std::unordered_map<std::string, Value> data;
  std::vector<std::unique_ptr<Conn>> conns;
  Clock::time_point log_window{};
  int logged = 0;
  size_t unlogged = 0;

  ~State() {
    conns.clear();
    data.clear();
  }

  // A value counted against the bound for as long as anything holds it.
  Value keep(Bytes bytes) {
    const size_t n = bytes.capacity();
    held += n;
    return Value(new Bytes(std::move(bytes)), [this, n](const Bytes* p) {
      held -= n;
      delete p;
    });
  }

  // Holds `cost` bytes of the bound for c's message; false when the run would pass it.
  bool reserve(Conn& c, size_t cost) {
    if (cost > max_bytes || held + reserved > max_bytes - cost) return false;
    reserved += cost;
    c.reserved = cost;
    return true;
  }
  void unreserve(Conn& c) {
    reserved -= c.reserved;
    c.reserved = 0;
  }

  void log_drop(const Conn& c, const std::string& why) {
    auto now = Clock::now();
    if (now - log_window >= kLogWindow) {
      if (unlogged) {
        std::fprintf(stderr, "moe-ep store server (run %s): %zu more dropped clients were not logged\n", run_id.c_str(),
                     unlogged);
      }
      log_window = now;
      logged = 0;
      unlogged = 0;
    }
    if (logged >= kLogBurst) {
      ++unlogged;
      return;
    }
    ++logged;
    std::fprintf(stderr, "moe-ep store server (run %s): dropped the client %s: %s\n", run_id.c_str(), c.peer.c_str(),
                 why.c_str());
  }

  void drop(Conn& c, const std::string& why) {
    log_drop(c, why);
    c.dead = true;
  }

  void close_conn(Conn& c) {
    unreserve(c);
    ::close(c.fd);
  }

  void reply(Conn& c, uint16_t op, const uint8_t* payload, size_t n, Value value = nullptr) {
    wire::Header h;
    h.op = op;
    h.value_len = uint32_t(n + (value ? value->size() : 0));
    c.out.resize(wire::kHeaderBytes + n);
    wire::encode(h, c.out.data());
    if (n) std::memcpy(c.out.data() + wire::kHeaderBytes, payload, n);
    c.out_value = std::move(value);
    c.out_sent = 0;
    flush(c);
  }
  void reply_text(Conn& c, uint16_t op, const std::string& text) {
    reply(c, op, reinterpret_cast<const uint8_t*>(text.data()), text.size());
  }

  void flush(Conn& c) {
    while (c.out_sent < c.out_size()) {
      // Header and value in one call, so that a reply leaves in as few segments as it can.
      iovec iov[2];
      int parts = 0;
      if (c.out_sent < c.out.size()) iov[parts++] = {c.out.data() + c.out_sent, c.out.size() - c.out_sent};
      if (c.out_value && !c.out_value->empty()) {
        size_t at = c.out_sent > c.out.size() ? c.out_sent - c.out.size() : 0;
        iov[parts++] = {const_cast<uint8_t*>(c.out_value->data()) + at, c.out_value->size() - at};
      }
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = size_t(parts);
      ssize_t w = ::sendmsg(c.fd, &msg, MSG_NOSIGNAL);
      if (w > 0) {
        c.out_sent += size_t(w);
        continue;
      }
      if (w < 0 && errno == EINTR) continue;
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      c.dead = true;
      return;
    }
    c.out.clear();
    c.out_value.reset();
    c.out_sent = 0;
    if (c.close_after_write) c.dead = true;
  }

  // Answers a held GET / WAIT whose key now exists.
  void answer_parked(Conn& c, const Value& value) {
    uint16_t op = c.parked_op;
    c.parked_op = 0;
    c.parked_key.clear();
    if (op == wire::kGet) {
      reply(c, wire::kValue, nullptr, 0, value);
    } else {
      reply(c, wire::kOk, nullptr, 0);
    }
  }

  void key_written(const std::string& key, const Value& value) {
    for (auto& other : conns) {
      if (!other->dead && other->parked_op != 0 && other->parked_key == key) answer_parked(*other, value);
    }
  }

  // Stores value under key; the message's reservation has been released.
  Value store(std::string key, Bytes bytes) {
    Value v = keep(std::move(bytes));
    auto it = data.find(key);
    if (it == data.end()) {
      held += key.size() + kEntryOverheadBytes;
      data.emplace(std::move(key), v);
    } else {
      it->second = v;  // the old value goes once no reply still sends it
    }
    return v;
  }

  void handle(Conn& c, const wire::Header& h, std::string key, Bytes value) {
    if (h.op == wire::kHello) {
      if (key == run_id) {
        c.hello = true;
        reply(c, wire::kOk, nullptr, 0);
      } else {
        log_drop(c, "its HELLO names another run id, " + describe_key(key));
        c.close_after_write = true;
        reply_text(c, wire::kRefused, "this store serves another run (the run ids differ)");
      }
      return;
    }
    switch (h.op) {
      case wire::kSet: {
        Value v = store(key, std::move(value));
        reply(c, wire::kOk, nullptr, 0);
        key_written(key, v);
        return;
      }
      case wire::kGet:
      case wire::kWait: {
        auto it = data.find(key);
        if (it != data.end()) {
          if (h.op == wire::kGet) {
            reply(c, wire::kValue, nullptr, 0, it->second);
          } else {
            reply(c, wire::kOk, nullptr, 0);
          }
        } else {
          c.parked_op = h.op;
          c.parked_key = std::move(key);
        }
        return;
      }
      case wire::kCheck: {
        uint8_t exists = data.count(key) ? 1 : 0;
        reply(c, wire::kValue, &exists, 1);
        return;
      }
      case wire::kAdd: {
        int64_t delta = wire::get_i64(value.data());
        int64_t result;
        try {
          auto it = data.find(key);
          int64_t current = it == data.end() ? 0 : parse_counter(*it->second, key);
          result = add_counter(current, delta, key);
        } catch (const Error& e) {
          reply_text(c, wire::kError, e.what());
          return;
        }
        Value v = store(key, format_counter(result));
        uint8_t out[8];
        wire::put_i64(result, out);
        reply(c, wire::kValue, out, 8);
        key_written(key, v);
        return;
      }
      default:
        drop(c, "unknown op " + std::to_string(h.op));
    }
  }

  // A header has arrived: checks it against the format and the bounds, and
  // sizes the buffers for its body. False when the connection is dropped.
  bool start_message(Conn& c) {
    const wire::Header& h = c.header = wire::decode(c.head);
    if (!c.hello) {
      // Before the handshake only a HELLO, whose caps keep it under 150 bytes.
      if (h.op != wire::kHello || !wire::valid_request(h)) {
        drop(c, "sent " + pre_hello_text(h) + " before its handshake (only a HELLO of at most " +
                    std::to_string(wire::kHeaderBytes + kMaxRunIdBytes) + " bytes may come first)");
        return false;
      }
    } else if (!wire::valid_request(h) || h.op == wire::kHello) {
      drop(c, "broke the wire format (op " + std::to_string(h.op) + ", key " + std::to_string(h.key_len) +
                  " bytes, value " + std::to_string(h.value_len) + " bytes)");
      return false;
    }
    const size_t stored = h.op == wire::kSet ? h.value_len : h.op == wire::kAdd ? kCounterBytes : 0;
    if (h.op == wire::kSet || h.op == wire::kAdd) {
      const size_t cost = h.key_len + stored + kEntryOverheadBytes;
      if (!reserve(c, cost)) {
        const std::string bound =
            "the run's bound of " + std::to_string(max_bytes) + " bytes (maxBytes / MOE_EP_STORE_MAX_BYTES on rank 0)";
        log_drop(c, "its " + std::string(h.op == wire::kSet ? "set" : "add") + " of " + std::to_string(cost) +
                        " bytes would pass " + bound + "; the run holds " + std::to_string(held + reserved));
        // Read to its end without keeping it, so that the client reads the answer.
        c.refusal = "store: rank 0's store for run " + run_id + " would pass " + bound + " with this " +
                    std::to_string(h.value_len) + "-byte value; it holds " + std::to_string(held + reserved) +
                    " bytes. The connection is closed";
        c.discard_left = size_t(h.key_len) + h.value_len;
        c.head_have = 0;
        if (c.discard_left == 0) refuse(c);
        return false;
      }
    }
    c.key.resize(h.key_len);
    c.value.resize(h.value_len);
    c.body_have = 0;
    return true;
  }

  void refuse(Conn& c) {
    c.close_after_write = true;
    reply_text(c, wire::kError, c.refusal);
    c.refusal.clear();
  }

  // Was recv's result data? Otherwise marks the end of the connection, if it ended.
  static bool received(Conn& c, ssize_t r) {
    if (r > 0) return true;
    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) c.dead = true;
    return false;
  }

  void readable(Conn& c) {
    if (c.busy()) {
      // A request is pending, so the client may not send: a byte here breaks
      // the protocol, and end-of-file means it left.
      uint8_t b;
      ssize_t r = ::recv(c.fd, &b, 1, 0);
      if (r > 0) {
        drop(c, "sent a request while its last one was unanswered");
      } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        c.dead = true;
      }
      return;
    }
    if (c.discard_left > 0) {
      uint8_t sink[1 << 16];
      ssize_t r = ::recv(c.fd, sink, std::min(sizeof sink, c.discard_left), 0);
      if (!received(c, r)) return;
      c.discard_left -= size_t(r);
      if (c.discard_left == 0) refuse(c);
      return;
    }
    if (c.head_have < wire::kHeaderBytes) {
      ssize_t r = ::recv(c.fd, c.head + c.head_have, wire::kHeaderBytes - c.head_have, 0);
      if (!received(c, r)) return;
      c.head_have += size_t(r);
      if (c.head_have < wire::kHeaderBytes || !start_message(c)) return;
    }
    const size_t key_len = c.header.key_len;
    const size_t total = key_len + c.header.value_len;
    if (c.body_have < total) {
      uint8_t* dst = c.body_have < key_len ? reinterpret_cast<uint8_t*>(&c.key[c.body_have])
                                           : c.value.data() + (c.body_have - key_len);
      size_t want = c.body_have < key_len ? key_len - c.body_have : total - c.body_have;
      ssize_t r = ::recv(c.fd, dst, want, 0);
      if (!received(c, r)) return;
      c.body_have += size_t(r);
      if (c.body_have < total) return;
    }
    wire::Header h = c.header;
    std::string key = std::move(c.key);
    Bytes value = std::move(c.value);
    c.key = std::string();
    c.value = Bytes();
    c.head_have = 0;
    c.body_have = 0;
    unreserve(c);
    handle(c, h, std::move(key), std::move(value));
  }
};

TcpServer::TcpServer(const std::string& host, int port, std::string run_id, size_t max_bytes)
    : run_id_(std::move(run_id)), max_bytes_(max_bytes) {
  addr_ = net::resolve_ipv4(host);
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) fail(Code::Internal, std::string("store server: socket() failed: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr = addr_;
  sa.sin_port = htons(uint16_t(port));
  std::string where = net::format_ipv4(addr_) + ":" + std::to_string(port);
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(listen_fd_, 128) != 0) {
    int err = errno;
    ::close(listen_fd_);
    fail(Code::Value,
         "store server: cannot listen on " + where + " (host " + describe_key(host) + "): " + std::strerror(err));
  }
  socklen_t len = sizeof sa;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len);
  port_ = ntohs(sa.sin_port);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    ::close(listen_fd_);
    fail(Code::Internal, std::string("store server: pipe() failed: ") + std::strerror(errno));
  }
  wake_read_ = pipe_fds[0];
  wake_write_ = pipe_fds[1];
  thread_ = std::thread([this] { serve(); });
}

TcpServer::~TcpServer() { stop(); }

void TcpServer::stop() {
  std::lock_guard<std::mutex> lock(stop_mu_);
  if (stopping_.exchange(true)) return;
  uint8_t b = 1;
  [[maybe_unused]] ssize_t w = ::write(wake_write_, &b, 1);
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  ::close(wake_read_);
  ::close(wake_write_);
  listen_fd_ = wake_read_ = wake_write_ = -1;
}

void TcpServer::serve() {
  State st;
  st.run_id = run_id_;
  st.max_bytes = max_bytes_;
  std::vector<pollfd> fds;
  while (!stopping_) {
    try {
      fds.clear();
      fds.push_back({wake_read_, POLLIN, 0});
      fds.push_back({listen_fd_, short(st.conns.size() < kMaxConnections ? POLLIN : 0), 0});
      auto now = Clock::now();
      auto next_expiry = now + std::chrono::seconds(1);
      for (auto& c : st.conns) {
        fds.push_back({c->fd, short(POLLIN | (c->out_sent < c->out_size() ? POLLOUT : 0)), 0});
        if (!c->hello) next_expiry = std::min(next_expiry, c->accepted + kHelloWindow);
      }
      int rc = ::poll(fds.data(), fds.size(), net::poll_ms(next_expiry));
      if (rc < 0 && errno != EINTR) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      if (stopping_ || (fds[0].revents & POLLIN)) break;
      if (rc > 0) {
        // Connections first (their indices match fds[2..]), then new ones.
        for (size_t i = 0; i < st.conns.size(); ++i) {
          Conn& c = *st.conns[i];
          short ev = fds[i + 2].revents;
          if (!ev || c.dead) continue;
          try {
            if (ev & POLLOUT) st.flush(c);
            if (!c.dead && (ev & (POLLIN | POLLHUP | POLLERR))) st.readable(c);
          } catch (...) {
            // e.g. out of memory for one message: drop that client, serve the rest
            c.dead = true;
          }
        }
        if (fds[1].revents & POLLIN) {
          for (;;) {
            sockaddr_in from{};
            socklen_t from_len = sizeof from;
            int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&from), &from_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) break;
            if (st.conns.size() >= kMaxConnections) {
              ::close(fd);
              continue;
            }
            auto c = std::make_unique<Conn>();
            c->fd = fd;
            c->peer = peer_name(from);
            c->accepted = Clock::now();
            st.conns.push_back(std::move(c));
          }
        }
      }
      now = Clock::now();
      for (auto& c : st.conns) {
        if (!c->hello && !c->dead && now - c->accepted >= kHelloWindow) {
          st.drop(*c, "sent no HELLO within " + std::to_string(kHelloWindow.count()) + " s");
        }
      }
      for (size_t i = 0; i < st.conns.size();) {
        if (st.conns[i]->dead) {
          st.close_conn(*st.conns[i]);
          st.conns[i] = std::move(st.conns.back());
          st.conns.pop_back();
        } else {
          ++i;
        }
      }
    } catch (...) {
      // Out of memory building the poll set: wait a little and carry on.
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  for (auto& c : st.conns) st.close_conn(*c);
}

}  // namespace moe::comm
