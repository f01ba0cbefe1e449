#include "tcp_server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <unordered_map>
#include <vector>

#include "../core/error.h"
#include "net.h"
#include "tcp_wire.h"

namespace moe::comm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxConnections = 1024;
// A client that has not said HELLO by then is dropped, so idle strangers cannot hold slots.
constexpr auto kHelloWindow = std::chrono::seconds(10);

struct Conn {
  int fd = -1;
  Clock::time_point accepted;
  bool hello = false;
  bool dead = false;
  bool close_after_write = false;
  std::vector<uint8_t> in;  // the message being received
  bool header_checked = false;
  wire::Header header;
  std::vector<uint8_t> out;  // reply bytes not yet sent
  size_t out_sent = 0;
  uint16_t parked_op = 0;  // GET or WAIT held until its key exists
  std::string parked_key;

  bool busy() const { return parked_op != 0 || out_sent < out.size(); }
};

}  // namespace

struct TcpServer::State {
  std::string run_id;
  std::unordered_map<std::string, Bytes> data;
  std::vector<std::unique_ptr<Conn>> conns;

  void reply(Conn& c, uint16_t op, const uint8_t* value, size_t n) {
    wire::Header h;
    h.op = op;
    h.value_len = uint32_t(n);
    size_t at = c.out.size();
    c.out.resize(at + wire::kHeaderBytes + n);
    wire::encode(h, c.out.data() + at);
    if (n) std::memcpy(c.out.data() + at + wire::kHeaderBytes, value, n);
    flush(c);
  }
  void reply_text(Conn& c, uint16_t op, const std::string& text) {
    reply(c, op, reinterpret_cast<const uint8_t*>(text.data()), text.size());
  }

  void flush(Conn& c) {
    while (c.out_sent < c.out.size()) {
      ssize_t w = ::send(c.fd, c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
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
    c.out_sent = 0;
    if (c.close_after_write) c.dead = true;
  }

  // Answers a held GET / WAIT whose key now exists.
  void answer_parked(Conn& c, const Bytes& value) {
    uint16_t op = c.parked_op;
    c.parked_op = 0;
    c.parked_key.clear();
    if (op == wire::kGet) {
      reply(c, wire::kValue, value.data(), value.size());
    } else {
      reply(c, wire::kOk, nullptr, 0);
    }
  }

  void key_written(const std::string& key, const Bytes& value) {
    for (auto& other : conns) {
      if (!other->dead && other->parked_op != 0 && other->parked_key == key) answer_parked(*other, value);
    }
  }

  void handle(Conn& c, const wire::Header& h, std::string key, Bytes value) {
    if (h.op == wire::kHello) {
      if (c.hello) {
        c.dead = true;  // HELLO twice
      } else if (key == run_id) {
        c.hello = true;
        reply(c, wire::kOk, nullptr, 0);
      } else {
        c.close_after_write = true;
        reply_text(c, wire::kRefused, "this store serves another run (the run ids differ)");
      }
      return;
    }
    if (!c.hello) {
      c.dead = true;  // anything before HELLO
      return;
    }
    switch (h.op) {
      case wire::kSet: {
        Bytes& slot = data[key];
        slot = std::move(value);
        reply(c, wire::kOk, nullptr, 0);
        key_written(key, slot);
        return;
      }
      case wire::kGet:
      case wire::kWait: {
        auto it = data.find(key);
        if (it != data.end()) {
          if (h.op == wire::kGet) {
            reply(c, wire::kValue, it->second.data(), it->second.size());
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
          int64_t current = it == data.end() ? 0 : parse_counter(it->second, key);
          result = add_counter(current, delta, key);
        } catch (const Error& e) {
          reply_text(c, wire::kError, e.what());
          return;
        }
        Bytes& slot = data[key];
        slot = format_counter(result);
        uint8_t out[8];
        wire::put_i64(result, out);
        reply(c, wire::kValue, out, 8);
        key_written(key, slot);
        return;
      }
      default:
        c.dead = true;
    }
  }

  void readable(Conn& c) {
    if (c.busy()) {
      // A request is pending, so the client may not send: a byte here breaks
      // the protocol, and end-of-file means it left.
      uint8_t b;
      ssize_t r = ::recv(c.fd, &b, 1, 0);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) || r > 0) c.dead = true;
      return;
    }
    size_t need = c.header_checked ? wire::kHeaderBytes + c.header.key_len + c.header.value_len : wire::kHeaderBytes;
    size_t have = c.in.size();
    size_t chunk = std::min<size_t>(need - have, 1 << 16);
    c.in.resize(have + chunk);
    ssize_t r = ::recv(c.fd, c.in.data() + have, chunk, 0);
    if (r <= 0) {
      c.in.resize(have);
      if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) c.dead = true;
      return;
    }
    c.in.resize(have + size_t(r));
    if (!c.header_checked) {
      if (c.in.size() < wire::kHeaderBytes) return;
      c.header = wire::decode(c.in.data());
      if (!wire::valid_request(c.header)) {
        c.dead = true;
        return;
      }
      c.header_checked = true;
    }
    size_t total = wire::kHeaderBytes + c.header.key_len + c.header.value_len;
    if (c.in.size() < total) return;
    const uint8_t* p = c.in.data() + wire::kHeaderBytes;
    std::string key(reinterpret_cast<const char*>(p), c.header.key_len);
    Bytes value(p + c.header.key_len, p + c.header.key_len + c.header.value_len);
    wire::Header h = c.header;
    c.in.clear();
    c.in.shrink_to_fit();
    c.header_checked = false;
    handle(c, h, std::move(key), std::move(value));
  }
};

TcpServer::TcpServer(const std::string& host, int port, std::string run_id) : run_id_(std::move(run_id)) {
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
  std::vector<pollfd> fds;
  while (!stopping_) {
    try {
      fds.clear();
      fds.push_back({wake_read_, POLLIN, 0});
      fds.push_back({listen_fd_, short(st.conns.size() < kMaxConnections ? POLLIN : 0), 0});
      auto now = Clock::now();
      auto next_expiry = now + std::chrono::seconds(1);
      for (auto& c : st.conns) {
        fds.push_back({c->fd, short(POLLIN | (c->out_sent < c->out.size() ? POLLOUT : 0)), 0});
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
            c.dead = true;  // e.g. out of memory for one message: drop that client, serve the rest
          }
        }
        if (fds[1].revents & POLLIN) {
          for (;;) {
            int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) break;
            if (st.conns.size() >= kMaxConnections) {
              ::close(fd);
              continue;
            }
            auto c = std::make_unique<Conn>();
            c->fd = fd;
            c->accepted = Clock::now();
            st.conns.push_back(std::move(c));
          }
        }
      }
      now = Clock::now();
      for (auto& c : st.conns) {
        if (!c->hello && now - c->accepted >= kHelloWindow) c->dead = true;
      }
      for (size_t i = 0; i < st.conns.size();) {
        if (st.conns[i]->dead) {
          ::close(st.conns[i]->fd);
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
  for (auto& c : st.conns) ::close(c->fd);
}

}  // namespace moe::comm
