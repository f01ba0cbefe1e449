#include "store.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <limits>

#include "../core/error.h"
#include "file_store.h"
#include "tcp_store.h"

namespace moe::comm {

std::string describe_key(const std::string& key) {
  constexpr size_t kShown = 80;
  std::string out = "\"";
  for (size_t i = 0; i < key.size() && i < kShown; ++i) {
    unsigned char c = static_cast<unsigned char>(key[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  out += "\"";
  if (key.size() > kShown) out += " (" + std::to_string(key.size()) + " bytes, cut)";
  return out;
}

void check_key(const std::string& key, const char* op) {
  if (key.empty()) fail(Code::Value, std::string("store ") + op + ": expected a non-empty key but received \"\"");
  if (key.size() > kMaxKeyBytes) {
    fail(Code::Value, std::string("store ") + op + ": expected a key of at most " + std::to_string(kMaxKeyBytes) +
                          " bytes but received " + std::to_string(key.size()) + " bytes");
  }
}

void check_value(const Bytes& value, const char* op) {
  if (value.size() > kMaxValueBytes) {
    fail(Code::Value, std::string("store ") + op + ": expected a value of at most " + std::to_string(kMaxValueBytes) +
                          " bytes but received " + std::to_string(value.size()) + " bytes");
  }
}

int64_t parse_counter(const Bytes& text, const std::string& key) {
  auto bad = [&] {
    fail(Code::Value, "store add: key " + describe_key(key) + " holds a value that is not a decimal integer counter");
  };
  if (text.empty() || text.size() > 20) bad();
  size_t i = 0;
  bool negative = false;
  if (text[0] == '-') {
    negative = true;
    i = 1;
    if (text.size() == 1) bad();
  }
  // Accumulate as a negative number so INT64_MIN parses too.
  int64_t v = 0;
  for (; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') bad();
    int digit = text[i] - '0';
    if (v < (std::numeric_limits<int64_t>::min() + digit) / 10) bad();
    v = v * 10 - digit;
  }
  if (!negative) {
    if (v == std::numeric_limits<int64_t>::min()) bad();
    v = -v;
  }
  return v;
}

Bytes format_counter(int64_t value) {
  std::string s = std::to_string(value);
  return Bytes(s.begin(), s.end());
}

std::chrono::steady_clock::time_point deadline_after(Millis timeout) {
  constexpr Millis kYear{365LL * 24 * 3600 * 1000};
  return std::chrono::steady_clock::now() + std::clamp(timeout, Millis(0), kYear);
}

int64_t add_counter(int64_t current, int64_t delta, const std::string& key) {
  int64_t out;
  if (__builtin_add_overflow(current, delta, &out)) {
    fail(Code::Value, "store add: key " + describe_key(key) + " would overflow int64 (" + std::to_string(current) +
                          " + " + std::to_string(delta) + ")");
  }
  return out;
}

namespace {

// Run ids name a directory of the file store, so they are kept to a safe alphabet.
void check_run_id(const std::string& run_id) {
  if (run_id.size() > kMaxRunIdBytes) {
    fail(Code::Value, "store: expected a run id of at most " + std::to_string(kMaxRunIdBytes) +
                          " characters but received " + std::to_string(run_id.size()));
  }
  for (char c : run_id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      fail(Code::Value,
           "store: expected a run id of letters, digits, '-', '_' and '.' but received " + describe_key(run_id));
    }
  }
  if (!run_id.empty() && run_id[0] == '.') {
    fail(Code::Value, "store: expected a run id that does not start with '.' but received " + describe_key(run_id));
  }
}

void check_options(const StoreOptions& opts) {
  if (opts.world_size < 1)
    fail(Code::Value, "store: expected worldSize >= 1 but received " + std::to_string(opts.world_size));
  if (opts.rank < 0 || opts.rank >= opts.world_size) {
    fail(Code::Value, "store: expected rank in [0, " + std::to_string(opts.world_size - 1) + "] but received " +
                          std::to_string(opts.rank));
  }
  if (opts.timeout.count() < 0) {
    fail(Code::Value, "store: expected a timeout >= 0 ms but received " + std::to_string(opts.timeout.count()));
  }
  if (opts.max_bytes < kMinMaxStoreBytes) {
    fail(Code::Value, "store: expected maxBytes >= " + std::to_string(kMinMaxStoreBytes) + " but received " +
                          std::to_string(opts.max_bytes));
  }
  check_run_id(opts.run_id);
}

}  // namespace

std::shared_ptr<Store> open_store(const std::string& url, const StoreOptions& opts) {
  check_options(opts);
  const std::string file_scheme = "file://";
  const std::string tcp_scheme = "tcp://";
  if (url.compare(0, file_scheme.size(), file_scheme) == 0) {
    std::string dir = url.substr(file_scheme.size());
    if (dir.empty() || dir[0] != '/') {
      fail(Code::Value, "store: expected file:///absolute/dir but received " + describe_key(url));
    }
    if (opts.run_id.empty()) {
      fail(Code::Value,
           "store: a file:// store needs a run id so that files of an earlier run are never read; "
           "set MOE_EP_RUN_ID (moe-ep launch sets a fresh one) or pass runId");
    }
    return std::make_shared<FileStore>(dir, opts);
  }
  if (url.compare(0, tcp_scheme.size(), tcp_scheme) == 0) {
    std::string rest = url.substr(tcp_scheme.size());
    if (!rest.empty() && rest.back() == '/') rest.pop_back();
    if (!rest.empty() && rest[0] == '[')
      fail(Code::Value, "store: IPv6 addresses are not supported: " + describe_key(url));
    size_t colon = rest.rfind(':');
    if (colon == std::string::npos)
      fail(Code::Value, "store: expected tcp://host:port but received " + describe_key(url));
    std::string host = rest.substr(0, colon);
    std::string port_text = rest.substr(colon + 1);
    long port = -1;
    if (!port_text.empty() && port_text.size() <= 5) {
      port = 0;
      for (char c : port_text) port = (c >= '0' && c <= '9') ? port * 10 + (c - '0') : -1000000;
    }
    if (port < 0 || port > 65535) {
      fail(Code::Value, "store: expected a port in [0, 65535] in " + describe_key(url));
    }
    if (host.find_first_of("/:@?#") != std::string::npos) {
      fail(Code::Value, "store: expected tcp://host:port but received " + describe_key(url));
    }
    if (host.empty()) host = "127.0.0.1";
    if (port == 0 && opts.rank != 0) {
      fail(Code::Value, "store: rank " + std::to_string(opts.rank) + " needs the server's port, but " +
                            describe_key(url) + " names port 0");
    }
    return std::make_shared<TcpStore>(host, int(port), opts);
  }
  fail(Code::Value,
       "store: expected a url of the form file:///abs/dir or tcp://host:port but received " + describe_key(url));
}

}  // namespace moe::comm
