#include "gloo_group.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>

#include "../core/check.h"
#include "../core/floats.h"

#ifdef MOE_EP_WITH_GLOO
#include <gloo/allgather.h>
#include <gloo/allgatherv.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/transport/tcp/address.h>
#include <gloo/transport/tcp/device.h>

#include "gloo_faults.h"
#include "gloo_store.h"
#include "net.h"
#include "shm_exchange.h"
#include "socket_abort.h"
#endif

namespace moe::comm {

namespace {

void check_cpu(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  if (t.device().kind != Device::CPU) {
    fail(Code::Device, std::string(op) + ": the Gloo process group moves CPU tensors, but " + name + " is on " +
                           t.device().str() + " (use the NCCL backend for GPU tensors)");
  }
}

}  // namespace

#ifdef MOE_EP_WITH_GLOO

namespace {

using Clock = std::chrono::steady_clock;
using gloo::rendezvous::Context;

// Checks that travel with every collective, so ranks that call different
// collectives, or the same one on different data, fail together instead of
// hanging or exchanging garbage. Every rank sees every rank's descriptor and
// compares it with rank 0's, so all of them report the same disagreement.
constexpr int64_t kMagic = 0x6d6f6565702d6731;  // "moeep-g1"
enum OpKind : int64_t { kAllReduce = 1, kBroadcast, kAllToAll, kAllToAllV, kAllGatherV, kReduceScatterV };

const char* op_kind_name(int64_t k) {
  switch (k) {
    case kAllReduce:
      return "allReduce";
    case kBroadcast:
      return "broadcast";
    case kAllToAll:
      return "allToAll";
    case kAllToAllV:
      return "allToAllV";
    case kAllGatherV:
      return "allGatherV";
    case kReduceScatterV:
      return "reduceScatterV";
  }
  return "an unknown collective";
}

// The ranks' descriptors, laid out as seen by every rank.
struct Descriptor {
  int64_t magic, seq, op, dtype, numel, param;
};
static_assert(sizeof(Descriptor) == 6 * sizeof(int64_t), "packed");

Millis remaining(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now());
  return std::max(left, Millis(1));
}

// FNV-1a over the trailing dims of a row, so ranks with rows of another shape disagree.
using ReduceFn = void (*)(void*, const void*, const void*, size_t);

template <class T>
ReduceFn reduce_fn(ReduceOp op) {
  return op == ReduceOp::Max ? static_cast<ReduceFn>(&gloo::max<T>) : static_cast<ReduceFn>(&gloo::sum<T>);
}

template <class T>
void allreduce_raw(const std::shared_ptr<Context>& ctx, T* data, size_t n, ReduceOp op, Millis timeout) {
  gloo::AllreduceOptions o(ctx);
  o.setOutput<T>(data, n);
  o.setReduceFunction(reduce_fn<T>(op));
  o.setTimeout(timeout);
  gloo::allreduce(o);
}

// out[i] = sum over p of parts[p][i], p ascending; half dtypes accumulate in float32.
template <class T>
void sum_parts(T* out, const T* in, int parts, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T acc = in[i];
    for (int p = 1; p < parts; ++p) acc += in[int64_t(p) * n + i];
    out[i] = acc;
  }
}

void sum_chunks(const Tensor& out, const void* in, int parts) {
  const int64_t n = out.numel();
  switch (out.dtype) {
    case DType::F32:
      sum_parts(out.data<float>(), static_cast<const float*>(in), parts, n);
      break;
    case DType::I32:
      sum_parts(out.data<int32_t>(), static_cast<const int32_t*>(in), parts, n);
      break;
    case DType::I64:
      sum_parts(out.data<int64_t>(), static_cast<const int64_t*>(in), parts, n);
      break;
    case DType::BF16:
    case DType::F16: {
      std::vector<float> f(static_cast<size_t>(n * parts)), acc(static_cast<size_t>(n));
      to_f32(in, out.dtype, f.data(), n * parts);
      sum_parts(acc.data(), f.data(), parts, n);
      from_f32(acc.data(), out.raw(), out.dtype, n);
      break;
    }
  }
}

}  // namespace

// The Gloo side of a group. `mu` guards the fields the JS thread also reads.
struct GlooGroup::Impl {
  std::mutex mu;
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<Context> context;
  std::optional<std::pair<Code, std::string>> fault;
  std::string address;  // the hostname resolved, once the device exists
  bool busy = false;
  int64_t seq = 0;                                       // collectives run so far (group thread only)
  std::vector<std::vector<std::string>> peer_endpoints;  // each peer's addresses as Gloo's messages print them
  std::vector<Endpoints> connections;                    // this rank's connections (local end, peer end)

  // Shuts every connection down: Gloo's event loop reads end-of-file and fails
  // the waits on them, and the peers read end-of-file too.
  void abort_connections() {
    std::vector<Endpoints> c;
    {
      std::lock_guard<std::mutex> lock(mu);
      c = connections;
    }
    shutdown_connections(c);
  }
  std::map<std::string, int> subgroups;  // members -> sub-groups made of them so far

  // allToAllV's rows through shared memory (shm_exchange.h): 0 until the first allToAllV sets it
  // up, then 1 (in use, `shm` set) or -1 (sockets only: one rank, MOE_EP_SHM=0 on some rank, or a
  // rank could not map the others' segments).
  int shm_state = 0;
  std::unique_ptr<ShmExchange> shm;  // set and used on the group thread; `mu` guards the pointer
  void shm_failed() {
    std::lock_guard<std::mutex> lock(mu);
    if (shm) shm->mark_failed();
  }
};

namespace {

// Runs a collective's body on the group thread with the group's checks and
// fault handling around it.
class Collective {
 public:
  Collective(GlooGroup& g, GlooGroup::Impl& impl, const char* op) : g_(g), impl_(impl), op_(op) {
    std::lock_guard<std::mutex> lock(impl_.mu);
    if (g_.destroyed()) fail(Code::Disposed, std::string(op) + ": the process group was destroyed");
    if (impl_.fault)
      fail(impl_.fault->first, std::string(op) + ": the process group failed earlier: " + impl_.fault->second);
    if (!impl_.context) fail(Code::Internal, std::string(op) + ": the process group is not connected");
    ctx_ = impl_.context;
    impl_.busy = true;
    seq_ = ++impl_.seq;
    deadline_ = deadline_after(g_.timeout());
  }
  ~Collective() {
    std::lock_guard<std::mutex> lock(impl_.mu);
    impl_.busy = false;
  }

  const std::shared_ptr<Context>& ctx() const { return ctx_; }
  Millis left() const { return remaining(deadline_); }
  int64_t seq() const { return seq_; }

  template <class F>
  auto run(F&& body) -> decltype(body()) {
    try {
      return body();
    } catch (const gloo::IoException& e) {
      broken(io_fault(e.what()));
    } catch (const Error& e) {
      // Disagreements every rank saw alike: no data moved, the group stays usable.
      if (e.code() == Code::CountMismatch || e.code() == Code::Shape || e.code() == Code::Dtype ||
          e.code() == Code::Value) {
        throw;
      }
      broken(Error(e.code(), e.what()));
    } catch (const std::exception& e) {
      broken(Error(Code::Internal, std::string(op_) + ": Gloo failed: " + gloo_text(e.what())));
    }
  }

  // Every rank's descriptor of this call, checked against rank 0's.
  void agree(int64_t op, DType dtype, int64_t numel, int64_t param) {
    const int n = g_.size();
    Descriptor mine{kMagic, seq_, op, int64_t(dtype), numel, param};
    std::vector<Descriptor> all(static_cast<size_t>(n));
    if (n > 1) {
      gloo::AllgatherOptions o(ctx_);
      o.setInput<int64_t>(reinterpret_cast<int64_t*>(&mine), 6);
      o.setOutput<int64_t>(reinterpret_cast<int64_t*>(all.data()), size_t(6 * n));
      o.setTimeout(left());
      gloo::allgather(o);
    } else {
      all[0] = mine;
    }
    check_agreement(all, Code::Value, [&](int r) { return describe(all[size_t(r)]); });
  }

  // Throws the first disagreement with rank 0, the same on every rank.
  // param_code: the error when only `param` differs.
  template <class Describe>
  void check_agreement(const std::vector<Descriptor>& all, Code param_code, Describe describe) {
    const Descriptor& d0 = all[0];
    for (int r = 1; r < int(all.size()); ++r) {
      const Descriptor& d = all[size_t(r)];
      if (d.magic != kMagic || d.op != d0.op || d.seq != d0.seq) {
        fail(Code::Value, std::string(op_) + ": the ranks are not calling the same collective: " + who(0) + " calls " +
                              op_kind_name(d0.op) + " (collective #" + std::to_string(d0.seq) + " of the group) but " +
                              who(r) + " calls " + op_kind_name(d.op) + " (#" + std::to_string(d.seq) + ")");
      }
      if (d.dtype != d0.dtype || d.numel != d0.numel || d.param != d0.param) {
        Code code = d.dtype != d0.dtype ? Code::Dtype : d.numel != d0.numel ? Code::Shape : param_code;
        fail(code, std::string(op_) + ": the ranks disagree: " + who(0) + " passed " + describe(0) + " but " + who(r) +
                       " passed " + describe(r));
      }
    }
  }

  std::string who(int r) const {
    std::string s = "rank " + std::to_string(g_.world_ranks()[size_t(r)]);
    if (g_.name() != "world") s += " (rank " + std::to_string(r) + " of group " + g_.name() + ")";
    return s;
  }

  [[noreturn]] void broken(const Error& e) {
    std::string message = e.what();
    Code code = e.code();
    if (g_.destroyed()) {
      code = Code::Disposed;
      message = std::string(op_) + ": the process group was destroyed while the collective ran";
    }
    {
      std::lock_guard<std::mutex> lock(impl_.mu);
      if (!impl_.fault && code != Code::Disposed) impl_.fault.emplace(code, message);
    }
    // Peers waiting for this rank's rows in shared memory stop waiting.
    impl_.shm_failed();
    // Close every connection, so the other ranks learn at once instead of at their timeout.
    impl_.abort_connections();
    throw Error(code, message);
  }

 private:
  std::string describe(const Descriptor& d) const {
    std::string s = std::to_string(d.numel) + " " + dtype_name(DType(d.dtype)) + " elements";
    if (d.op == kAllReduce) s += " (op " + std::string(reduce_op_name(ReduceOp(d.param))) + ")";
    if (d.op == kBroadcast) s += " (root " + std::to_string(d.param) + ")";
    return s;
  }

  Error io_fault(const std::string& what) const {
    return gloo_io_error(op_, what, g_.timeout(), g_.name(), g_.rank(), g_.size(),
                         [&](const std::string& text) { return peer_in(text); });
  }

  // The peer whose connection endpoint a Gloo message names, as "rank N", or "".
  std::string peer_in(const std::string& text) const {
    std::lock_guard<std::mutex> lock(impl_.mu);
    for (size_t j = 0; j < impl_.peer_endpoints.size(); ++j) {
      for (const auto& e : impl_.peer_endpoints[j]) {
        if (endpoint_in(text, e)) return who(int(j));
      }
    }
    return "";
  }

  GlooGroup& g_;
  GlooGroup::Impl& impl_;
  const char* op_;
  std::shared_ptr<Context> ctx_;
  int64_t seq_ = 0;
  Clock::time_point deadline_;
};

}  // namespace

namespace {

// The first allToAllV sets shared memory up, every rank at once, after its rows moved over the
// sockets: each rank makes its segment, the names go round, each maps the others', and the
// ranks agree whether all succeeded. The names are removed once everyone has mapped them.
void shm_setup(Collective& c, GlooGroup& g, GlooGroup::Impl& I) {
  const int n = g.size();
  I.shm_state = -1;
  if (n < 2) return;
  constexpr size_t kName = 64;
  std::string why;
  std::unique_ptr<ShmExchange> s = shm_enabled() ? ShmExchange::create(g.rank(), n, &why) : nullptr;
  std::vector<char> mine(kName, 0), names(kName * size_t(n), 0);
  if (s) std::strncpy(mine.data(), s->name().c_str(), kName - 1);
  {
    gloo::AllgatherOptions o(c.ctx());
    o.setInput<char>(mine.data(), kName);
    o.setOutput<char>(names.data(), names.size());
    o.setTimeout(c.left());
    gloo::allgather(o);
  }
  std::vector<std::string> list;
  bool ok = s != nullptr;
  for (int p = 0; p < n; ++p) {
    list.emplace_back(&names[kName * size_t(p)]);
    ok = ok && !list.back().empty();
  }
  if (ok) ok = s->attach(list, &why);
  std::vector<int64_t> flags(static_cast<size_t>(n));
  int64_t flag = ok ? 1 : 0;
  {
    gloo::AllgatherOptions o(c.ctx());
    o.setInput<int64_t>(&flag, 1);
    o.setOutput<int64_t>(flags.data(), flags.size());
    o.setTimeout(c.left());
    gloo::allgather(o);
  }
  if (s) s->unlink();  // every rank has tried to map it by now
  for (int64_t f : flags) ok = ok && f == 1;
  if (!ok) return;
  std::lock_guard<std::mutex> lock(I.mu);
  I.shm = std::move(s);
  I.shm_state = 1;
}

using Piece = ShmExchange::Piece;

// Where each rank's rows lie in a buffer of allToAllV: one piece per rank in rank order, or with
// chunks one piece per chunk, chunk-major; by_rank_first: the chunks are [P, L] (recvChunks), else
// [L, P] (sendChunks).
std::vector<std::vector<Piece>> pieces_of(const std::vector<int64_t>& counts, const std::vector<int64_t>& chunks,
                                          bool by_rank_first, int64_t row_bytes) {
  const int n = int(counts.size());
  std::vector<std::vector<Piece>> out(static_cast<size_t>(n));
  int64_t at = 0;
  if (chunks.empty()) {
    for (int p = 0; p < n; ++p) {
      out[size_t(p)].push_back(Piece{at, counts[size_t(p)] * row_bytes});
      at += counts[size_t(p)] * row_bytes;
    }
    return out;
  }
  const int64_t L = int64_t(chunks.size()) / n;
  for (int64_t l = 0; l < L; ++l)
    for (int p = 0; p < n; ++p) {
      const int64_t bytes = chunks[size_t(by_rank_first ? p * L + l : l * n + p)] * row_bytes;
      out[size_t(p)].push_back(Piece{at, bytes});
      at += bytes;
    }
  return out;
}

// Copies the bytes of `from` (pieces of src) into the pieces `to` of dst, in order.
void copy_pieces(const char* src, const std::vector<Piece>& from, char* dst, const std::vector<Piece>& to) {
  size_t i = 0, j = 0;
  int64_t fi = 0, tj = 0;  // bytes used of from[i] and of to[j]
  while (i < from.size() && j < to.size()) {
    const int64_t a = from[i].bytes - fi, b = to[j].bytes - tj;
    if (a == 0) {
      ++i;
      fi = 0;
      continue;
    }
    if (b == 0) {
      ++j;
      tj = 0;
      continue;
    }
    const int64_t n = std::min(a, b);
    std::memcpy(dst + to[j].at + tj, src + from[i].at + fi, size_t(n));
    fi += n;
    tj += n;
  }
}

// The rows of an allToAllV through shared memory: this rank's own piece copied across, the
// others posted, then each peer's piece copied out as soon as it is posted.
void shm_rows(Collective& c, GlooGroup& g, ShmExchange& shm, const Tensor& x, const Tensor& output,
              const std::vector<std::vector<Piece>>& send, const std::vector<std::vector<Piece>>& recv) {
  const int n = g.size(), me = g.rank();
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(output.raw());
  const uint32_t seq = uint32_t(c.seq());
  shm.post(seq, src, send);
  copy_pieces(src, send[size_t(me)], dst, recv[size_t(me)]);

  ShmExchange::Wait wait{std::chrono::steady_clock::now() + c.left(), [&g] { return g.destroyed(); }};
  const std::string where =
      "group " + g.name() + ", rank " + std::to_string(me) + " of " + std::to_string(n) + ", shared memory";
  for (int i = 1; i < n; ++i) {
    const int p = (me + i) % n;  // each rank starts with a different peer
    switch (shm.receive(p, seq, dst, recv[size_t(p)], wait)) {
      case ShmExchange::Outcome::Ok:
        break;
      case ShmExchange::Outcome::Timeout:
        throw Error(Code::Timeout, "allToAllV: timed out after " + std::to_string(g.timeout().count()) +
                                       " ms waiting for the rows of " + c.who(p) + " (" + where +
                                       "): a rank is hung, stopped or too slow, or not calling the same collective");
      case ShmExchange::Outcome::PeerGone:
        throw Error(Code::PeerLost, "allToAllV: lost " + c.who(p) + " (" + where +
                                        "): its process exited while this rank waited for its rows");
      case ShmExchange::Outcome::PeerFailed:
        throw Error(Code::PeerLost,
                    "allToAllV: lost " + c.who(p) + " (" + where + "): its process group failed or was destroyed");
      case ShmExchange::Outcome::Stopped:
        throw Error(Code::Disposed, "allToAllV: the process group was destroyed while the collective ran");
    }
  }
}

}  // namespace

std::shared_ptr<GlooGroup> GlooGroup::create(std::shared_ptr<Store> store, std::string prefix, int rank,
                                             std::vector<int> world_ranks, GroupOptions options) {
  if (!store) fail(Code::Value, "process group: expected a store");
  if (world_ranks.empty() || rank < 0 || rank >= int(world_ranks.size())) {
    fail(Code::Value, "process group: expected rank in [0, " + std::to_string(world_ranks.size()) + ") but received " +
                          std::to_string(rank));
  }
  if (options.timeout.count() <= 0) fail(Code::Value, "process group: expected timeoutMs > 0");
  if (options.hostname.empty()) fail(Code::Value, "process group: expected a hostname to bind to");
  return std::shared_ptr<GlooGroup>(
      new GlooGroup(std::move(store), std::move(prefix), rank, std::move(world_ranks), std::move(options)));
}

GlooGroup::GlooGroup(std::shared_ptr<Store> store, std::string prefix, int rank, std::vector<int> world_ranks,
                     GroupOptions options)
    : store_(std::move(store)),
      prefix_(std::move(prefix)),
      rank_(rank),
      world_ranks_(std::move(world_ranks)),
      options_(std::move(options)),
      impl_(std::make_unique<Impl>()) {}

GlooGroup::~GlooGroup() = default;

std::optional<std::pair<Code, std::string>> GlooGroup::fault() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->fault;
}

std::string GlooGroup::address() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->address.empty() ? options_.hostname : impl_->address;
}

Task<Unit> GlooGroup::connect() {
  return [self = shared_from_this()]() -> Unit {
    GlooGroup& g = *self;
    Impl& I = *g.impl_;
    const std::string op =
        "process group " + g.name() + " (rank " + std::to_string(g.rank_) + " of " + std::to_string(g.size()) + ")";
    auto deadline = deadline_after(g.timeout());
    std::shared_ptr<Context> ctx;
    try {
      std::shared_ptr<gloo::transport::Device> device;
      {
        std::lock_guard<std::mutex> lock(I.mu);
        device = I.device;
      }
      if (!device) {
        const std::string address =
            net::resolve_numeric(g.options_.hostname, "the hostname option / MOE_EP_GLOO_HOSTNAME");
        try {
          gloo::transport::tcp::attr attr;
          attr.hostname = address;
          device = gloo::transport::tcp::CreateDevice(attr);
        } catch (const std::exception&) {
          // Gloo's text here is an internal assertion (file, line, condition): it says nothing
          // the user can act on beyond what this message does. The handler below adds `op`.
          const std::string what = address == g.options_.hostname
                                       ? describe_key(address)
                                       : address + " (hostname " + describe_key(g.options_.hostname) + ")";
          fail(Code::Value, "could not use the address " + what +
                                " for Gloo's sockets: expected an address of this machine (or a name that " +
                                "resolves to one) that a socket can bind to");
        }
        std::lock_guard<std::mutex> lock(I.mu);
        I.device = device;
        I.address = address;
      }
      ctx = std::make_shared<Context>(g.rank_, g.size());
      ctx->setTimeout(g.timeout());
      GlooStoreAdapter store(g.store_, g.prefix_ + "/", deadline, &g.destroyed_);
      ctx->connectFullMesh(store, device);

      // Which socket is which peer's, so that a message naming an endpoint names a rank and the
      // group can shut its own connections down. Gloo knows each pair by the address it
      // published (the listening side's is also the connection's); every rank shares those.
      // The allgather also means every rank is connected: no one reads this group's keys any more.
      const size_t n = size_t(g.size());
      constexpr size_t kEnd = sizeof(sockaddr_storage);
      std::vector<char> mine(n * kEnd, 0), all(n * n * kEnd, 0);
      std::vector<sockaddr_storage> local(n);
      for (size_t j = 0; j < n; ++j) {
        if (int(j) == g.rank_) continue;
        const auto& a = dynamic_cast<const gloo::transport::tcp::Address&>(ctx->getPair(int(j))->address());
        local[j] = a.getSockaddr();
        std::memcpy(&mine[j * kEnd], &local[j], kEnd);
      }
      if (n > 1) {
        gloo::AllgatherOptions o(ctx);
        o.setInput<char>(mine.data(), mine.size());
        o.setOutput<char>(all.data(), all.size());
        o.setTimeout(remaining(deadline));
        gloo::allgather(o);
      }
      std::vector<Endpoints> sockets = list_connections();
      std::vector<std::vector<std::string>> ends(n);
      std::vector<Endpoints> connections;
      for (size_t j = 0; j < n; ++j) {
        if (int(j) == g.rank_) continue;
        sockaddr_storage theirs;
        std::memcpy(&theirs, &all[(j * n + size_t(g.rank_)) * kEnd], kEnd);
        ends[j].push_back(gloo::transport::tcp::Address(theirs).str());
        // The connection to j: its far end is j's published address (j listened), or its near
        // end is ours (we listened and accepted on that port).
        const Endpoints* found = nullptr;
        for (const auto& s : sockets) {
          if (same_endpoint(s.second, theirs)) found = &s;
        }
        for (const auto& s : sockets) {
          if (!found && same_endpoint(s.first, local[j])) found = &s;
        }
        // The address j published for this pair; when j connected rather than listened, Gloo's
        // messages on this side may name it instead of the connection's far end.
        auto blob = store.values_read().find(std::to_string(j));
        if (n > 1 && blob != store.values_read().end() && blob->second.size() % (n - 1) == 0) {
          const size_t size = blob->second.size() / (n - 1);
          const size_t slot = size_t(g.rank_) > j ? size_t(g.rank_) - 1 : size_t(g.rank_);
          try {
            std::vector<char> bytes(blob->second.begin() + long(slot * size),
                                    blob->second.begin() + long((slot + 1) * size));
            ends[j].push_back(gloo::transport::tcp::Address(bytes).str());
          } catch (const std::exception&) {
            // another layout: the names stay best effort
          }
        }
        if (found) {
          connections.push_back(*found);
          ends[j].push_back(gloo::transport::tcp::Address(found->second).str());
        }
      }
      std::lock_guard<std::mutex> lock(I.mu);
      if (g.destroyed()) fail(Code::Disposed, op + ": the process group was destroyed while it was connecting");
      I.peer_endpoints = std::move(ends);
      I.connections = std::move(connections);
      I.context = ctx;
      return Unit{};
    } catch (const gloo::IoException& e) {
      Error err = gloo_connect_error(op, e.what(), g.timeout());
      std::lock_guard<std::mutex> lock(I.mu);
      if (!I.fault) I.fault.emplace(err.code(), err.what());
      throw err;
    } catch (const Error& e) {
      Error err = e.code() == Code::Timeout
                      ? Error(Code::Timeout, op + ": the other ranks did not all arrive within " +
                                                 std::to_string(g.timeout().count()) + " ms (" + e.what() + ")")
                  : e.code() == Code::Disposed ? e
                                               : Error(e.code(), op + ": " + e.what());
      std::lock_guard<std::mutex> lock(I.mu);
      if (!I.fault && err.code() != Code::Disposed) I.fault.emplace(err.code(), err.what());
      throw err;
    } catch (const std::exception& e) {
      Error err(Code::Internal, op + ": Gloo failed while connecting: " + gloo_text(e.what()));
      std::lock_guard<std::mutex> lock(I.mu);
      if (!I.fault) I.fault.emplace(err.code(), err.what());
      throw err;
    }
  };
}

std::shared_ptr<GlooGroup> GlooGroup::subgroup(const std::vector<int>& members, std::optional<Millis> timeout) {
  const char* op = "newGroup";
  if (destroyed()) fail(Code::Disposed, std::string(op) + ": the process group was destroyed");
  const int my_index = check_members(op, members, size(), rank_);
  std::vector<int> world;
  for (int m : members) world.push_back(world_ranks_[size_t(m)]);
  std::string key = join(members);
  int n;
  std::shared_ptr<gloo::transport::Device> device;
  std::string address;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    n = impl_->subgroups[key]++;
    device = impl_->device;
    address = impl_->address;
  }
  GroupOptions o = options_;
  if (timeout) o.timeout = *timeout;
  o.name = "[" + join(world) + "]";
  std::string prefix = prefix_ + "/sub[" + key + "]#" + std::to_string(n);
  auto child = create(store_, prefix, my_index, world, o);
  child->impl_->device = device;  // one device (and its event loop thread) for a group and its sub-groups
  child->impl_->address = address;
  return child;
}

Task<AllToAllVResult> GlooGroup::all_to_all_v(const Tensor& x, std::vector<int64_t> send_counts,
                                              std::optional<std::vector<int64_t>> expected) {
  return all_to_all_v_chunks(x, std::move(send_counts), std::move(expected), AllToAllVChunks{});
}

Task<AllToAllVResult> GlooGroup::all_to_all_v_chunks(const Tensor& x, std::vector<int64_t> send_counts,
                                                     std::optional<std::vector<int64_t>> expected,
                                                     AllToAllVChunks chunks) {
  const char* op = "allToAllV";
  check_cpu(op, "x", x);
  check_all_to_all_v_args(op, x, send_counts, expected, world_ranks_);
  check_all_to_all_v_chunks(op, chunks, send_counts, expected, size());

  return [self = shared_from_this(), x, send_counts = std::move(send_counts), expected = std::move(expected),
          chunks = std::move(chunks)]() {
    GlooGroup& g = *self;
    Collective c(g, *g.impl_, "allToAllV");
    return c.run([&]() -> AllToAllVResult {
      const int n = g.size();
      const int me = g.rank();
      int64_t row_elems = 1;
      for (int d = 1; d < x.ndim(); ++d) row_elems *= x.dim(d);
      const size_t row_bytes = size_t(row_elems) * dtype_size(x.dtype);

      // Shared memory for this call's rows, if set up and this rank's outgoing rows fit.
      int64_t outgoing = 0;
      for (int p = 0; p < n; ++p)
        if (p != me) outgoing += send_counts[size_t(p)] * int64_t(row_bytes);
      const bool shm_ready = g.impl_->shm_state == 1 && g.impl_->shm->reserve(outgoing);

      // 1. The counts, with every rank's descriptor: block p of the output is what rank p sends here.
      constexpr int kFields = 8;  // magic, seq, count, has_expected, dtype, row elements, row shape hash, shm ready
      std::vector<int64_t> out(static_cast<size_t>(n * kFields)), in(static_cast<size_t>(n * kFields));
      const int64_t row_hash = shape_hash(x.shape, 1);
      for (int p = 0; p < n; ++p) {
        int64_t* b = &out[size_t(p * kFields)];
        b[0] = kMagic;
        b[1] = c.seq();
        b[2] = send_counts[size_t(p)];
        b[3] = expected ? 1 : 0;
        b[4] = int64_t(x.dtype);
        b[5] = row_elems;
        b[6] = row_hash;
        b[7] = shm_ready ? 1 : 0;
      }
      if (n > 1) {
        gloo::AlltoallOptions o(c.ctx());
        o.setInput<int64_t>(out.data(), out.size());
        o.setOutput<int64_t>(in.data(), in.size());
        o.setTimeout(c.left());
        gloo::alltoall(o);
      } else {
        in = out;
      }
      std::vector<int64_t> recv(static_cast<size_t>(n));
      std::vector<Descriptor> all(static_cast<size_t>(n));
      bool any_expected = false, all_shm = n > 1;
      for (int p = 0; p < n; ++p) {
        const int64_t* b = &in[size_t(p * kFields)];
        recv[size_t(p)] = b[2];
        any_expected = any_expected || b[3] != 0;
        all_shm = all_shm && b[7] == 1;
        all[size_t(p)] = Descriptor{b[0], b[1], kAllToAllV, b[4], b[5], b[6]};
      }
      c.check_agreement(all, Code::Shape, [&](int r) {
        const Descriptor& d = all[size_t(r)];
        return std::string(dtype_name(DType(d.dtype))) + " rows of " + std::to_string(d.numel) + " elements" +
               (d.param == all[0].param || d.numel != all[0].numel ? "" : " in another shape");
      });
      // Counts no tensor could hold (1 TiB per sender) are refused rather than allocated.
      const int64_t most = (int64_t(1) << 40) / int64_t(std::max<size_t>(row_bytes, 1));
      for (int p = 0; p < n; ++p) {
        if (recv[size_t(p)] < 0 || recv[size_t(p)] > most) {
          fail(Code::Value,
               "allToAllV: " + c.who(p) + " sends an impossible row count (" + std::to_string(recv[size_t(p)]) + ")");
        }
      }

      // 2. When any rank gave the counts it expects, every rank learns of every mismatch before rows move.
      if (any_expected) {
        int64_t report[5] = {-1, -1, -1, -1, 0};  // sender, receiver, sent, expected, mismatches
        if (expected) {
          for (int p = 0; p < n; ++p) {
            if ((*expected)[size_t(p)] == recv[size_t(p)]) continue;
            if (report[4]++ == 0) {
              report[0] = p;
              report[1] = me;
              report[2] = recv[size_t(p)];
              report[3] = (*expected)[size_t(p)];
            }
          }
        }
        std::vector<int64_t> reports(static_cast<size_t>(5 * n));
        if (n > 1) {
          gloo::AllgatherOptions o(c.ctx());
          o.setInput<int64_t>(report, 5);
          o.setOutput<int64_t>(reports.data(), reports.size());
          o.setTimeout(c.left());
          gloo::allgather(o);
        } else {
          std::copy(report, report + 5, reports.begin());
        }
        int64_t count = 0;
        const int64_t* first = nullptr;
        for (int r = 0; r < n; ++r) {
          const int64_t* rep = &reports[size_t(5 * r)];
          count += rep[4];
          if (rep[4] > 0 && !first) first = rep;
        }
        if (first) {
          std::string more = count > 1 ? " (" + std::to_string(count - 1) + " more pair" + (count > 2 ? "s" : "") +
                                             " of ranks disagree)"
                                       : "";
          fail(Code::CountMismatch, "allToAllV: " + c.who(int(first[0])) + " sends " + std::to_string(first[2]) +
                                        " rows to " + c.who(int(first[1])) + " but " + c.who(int(first[1])) +
                                        " expects " + std::to_string(first[3]) + more);
        }
      }

      // 3. The rows.
      int64_t rows_in = 0;
      for (int64_t r : recv) rows_in += r;
      Shape shape = x.shape;
      shape[0] = rows_in;
      AllToAllVResult result{empty(x.dtype, shape), recv};
      // Where each rank's rows lie in x and in the output (one piece per chunk with chunks).
      const auto send = pieces_of(send_counts, chunks.send, false, int64_t(row_bytes));
      const auto recv_at = pieces_of(recv, chunks.recv, true, int64_t(row_bytes));
      if (n == 1) {
        copy_pieces(static_cast<const char*>(x.raw()), send[0], static_cast<char*>(result.output.raw()), recv_at[0]);
        return result;
      }
      if (all_shm) {
        shm_rows(c, g, *g.impl_->shm, x, result.output, send, recv_at);
        return result;
      }
      std::vector<int64_t> send_bytes(static_cast<size_t>(n)), recv_bytes(static_cast<size_t>(n));
      for (int p = 0; p < n; ++p) {
        send_bytes[size_t(p)] = send_counts[size_t(p)] * int64_t(row_bytes);
        recv_bytes[size_t(p)] = recv[size_t(p)] * int64_t(row_bytes);
      }
      // Over the sockets, chunks are regrouped in a buffer laid out by rank, before and after.
      Tensor src_rows = x, dst_rows = result.output;
      if (!chunks.send.empty()) {
        src_rows = empty(x.dtype, x.shape);
        const auto by_rank = pieces_of(send_counts, {}, false, int64_t(row_bytes));
        for (int p = 0; p < n; ++p)
          copy_pieces(static_cast<const char*>(x.raw()), send[size_t(p)], static_cast<char*>(src_rows.raw()),
                      by_rank[size_t(p)]);
      }
      if (!chunks.recv.empty()) dst_rows = empty(result.output.dtype, result.output.shape);
      // Gloo sends every pair a message, empty ones too; an empty tensor still needs an address.
      static char dummy[1];
      gloo::AlltoallvOptions o(c.ctx());
      o.setInput<char>(src_rows.bytes() ? static_cast<char*>(src_rows.raw()) : dummy, send_bytes);
      o.setOutput<char>(dst_rows.bytes() ? static_cast<char*>(dst_rows.raw()) : dummy, recv_bytes);
      o.setTimeout(c.left());
      gloo::alltoallv(o);
      if (!chunks.recv.empty()) {
        const auto by_rank = pieces_of(recv, {}, true, int64_t(row_bytes));
        for (int p = 0; p < n; ++p)
          copy_pieces(static_cast<const char*>(dst_rows.raw()), by_rank[size_t(p)],
                      static_cast<char*>(result.output.raw()), recv_at[size_t(p)]);
      }
      if (g.impl_->shm_state == 0) shm_setup(c, g, *g.impl_);
      return result;
    });
  };
}

bool GlooGroup::shared_memory() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->shm != nullptr;
}

Task<AllGatherVResult> GlooGroup::all_gather_v(const Tensor& x) {
  const char* op = "allGatherV";
  check_cpu(op, "x", x);
  if (x.ndim() < 1) fail(Code::Shape, std::string(op) + ": expected x [rows, ...] but received a scalar");
  return [self = shared_from_this(), x]() {
    GlooGroup& g = *self;
    Collective c(g, *g.impl_, "allGatherV");
    return c.run([&]() -> AllGatherVResult {
      const int n = g.size();
      int64_t row_elems = 1;
      for (int d = 1; d < x.ndim(); ++d) row_elems *= x.dim(d);
      const size_t row_bytes = size_t(row_elems) * dtype_size(x.dtype);
      // 1. Every rank's descriptor and row count.
      constexpr int kFields = 7;  // magic, seq, op, dtype, row elements, row shape hash, rows
      int64_t mine[kFields] = {kMagic,  c.seq(), kAllGatherV, int64_t(x.dtype), row_elems, shape_hash(x.shape, 1),
                               x.dim(0)};
      std::vector<int64_t> in(static_cast<size_t>(n * kFields));
      if (n > 1) {
        gloo::AllgatherOptions o(c.ctx());
        o.setInput<int64_t>(mine, kFields);
        o.setOutput<int64_t>(in.data(), in.size());
        o.setTimeout(c.left());
        gloo::allgather(o);
      } else {
        std::copy(mine, mine + kFields, in.begin());
      }
      std::vector<Descriptor> all(static_cast<size_t>(n));
      std::vector<int64_t> counts(static_cast<size_t>(n));
      for (int p = 0; p < n; ++p) {
        const int64_t* b = &in[size_t(p * kFields)];
        all[size_t(p)] = Descriptor{b[0], b[1], b[2], b[3], b[4], b[5]};
        counts[size_t(p)] = b[6];
      }
      c.check_agreement(all, Code::Shape, [&](int r) {
        const Descriptor& d = all[size_t(r)];
        return std::string(dtype_name(DType(d.dtype))) + " rows of " + std::to_string(d.numel) + " elements" +
               (d.param == all[0].param || d.numel != all[0].numel ? "" : " in another shape");
      });
      int64_t rows = 0;
      for (int64_t r : counts) rows += r;
      // 2. The rows.
      Shape shape = x.shape;
      shape[0] = rows;
      AllGatherVResult result{empty(x.dtype, shape), counts};
      if (n == 1 || rows == 0) {
        if (x.bytes()) std::memcpy(result.output.raw(), x.raw(), x.bytes());
        return result;
      }
      std::vector<size_t> bytes(static_cast<size_t>(n));
      for (int p = 0; p < n; ++p) bytes[size_t(p)] = size_t(counts[size_t(p)]) * row_bytes;
      static char dummy[1];
      gloo::AllgathervOptions o(c.ctx());
      o.setInput<char>(x.bytes() ? static_cast<char*>(x.raw()) : dummy, x.bytes());
      o.setOutput<char>(static_cast<char*>(result.output.raw()), bytes);
      o.setTimeout(c.left());
      gloo::allgatherv(o);
      return result;
    });
  };
}

Task<Tensor> GlooGroup::reduce_scatter_v(const Tensor& x, std::vector<int64_t> counts) {
  const char* op = "reduceScatterV";
  check_cpu(op, "x", x);
  check_reduce_scatter_v_args(op, x, counts, size());
  return [self = shared_from_this(), x, counts = std::move(counts)]() {
    GlooGroup& g = *self;
    Collective c(g, *g.impl_, "reduceScatterV");
    return c.run([&]() -> Tensor {
      const int n = g.size();
      const int me = g.rank();
      int64_t row_elems = 1;
      for (int d = 1; d < x.ndim(); ++d) row_elems *= x.dim(d);
      const int64_t row_bytes = row_elems * int64_t(dtype_size(x.dtype));
      // 1. Every rank's descriptor and counts: they must agree before data moves.
      const int kFields = 6 + n;
      std::vector<int64_t> mine = {kMagic,           c.seq(),   kReduceScatterV,
                                   int64_t(x.dtype), row_elems, counts_hash(counts, x.shape)};
      mine.insert(mine.end(), counts.begin(), counts.end());
      std::vector<int64_t> in(static_cast<size_t>(n * kFields));
      if (n > 1) {
        gloo::AllgatherOptions o(c.ctx());
        o.setInput<int64_t>(mine.data(), mine.size());
        o.setOutput<int64_t>(in.data(), in.size());
        o.setTimeout(c.left());
        gloo::allgather(o);
      } else {
        in = mine;
      }
      std::vector<Descriptor> all(static_cast<size_t>(n));
      for (int p = 0; p < n; ++p) {
        const int64_t* b = &in[size_t(p * kFields)];
        all[size_t(p)] = Descriptor{b[0], b[1], b[2], b[3], b[4], b[5]};
      }
      c.check_agreement(all, Code::CountMismatch, [&](int r) {
        const int64_t* b = &in[size_t(r * kFields)];
        std::string s =
            std::string(dtype_name(DType(b[3]))) + " rows of " + std::to_string(b[4]) + " elements cut by counts [";
        for (int p = 0; p < n; ++p) s += (p ? ", " : "") + std::to_string(b[6 + p]);
        return s + "]";
      });
      // 2. Chunk p to rank p, then the sum of what arrived, in rank order.
      const int64_t mine_rows = counts[size_t(me)];
      Shape shape = x.shape;
      shape[0] = mine_rows;
      Tensor out = empty(x.dtype, shape);
      if (n == 1) {
        if (x.bytes()) std::memcpy(out.raw(), x.raw(), x.bytes());
        return out;
      }
      std::vector<char> parts(static_cast<size_t>(int64_t(n) * mine_rows * row_bytes));
      std::vector<int64_t> send_bytes(static_cast<size_t>(n)),
          recv_bytes(static_cast<size_t>(n), mine_rows * row_bytes);
      for (int p = 0; p < n; ++p) send_bytes[size_t(p)] = counts[size_t(p)] * row_bytes;
      static char dummy[1];
      gloo::AlltoallvOptions o(c.ctx());
      o.setInput<char>(x.bytes() ? static_cast<char*>(x.raw()) : dummy, send_bytes);
      o.setOutput<char>(parts.empty() ? dummy : parts.data(), recv_bytes);
      o.setTimeout(c.left());
      gloo::alltoallv(o);
      if (out.numel()) sum_chunks(out, parts.data(), n);
      return out;
    });
  };
}

Task<Tensor> GlooGroup::all_to_all(const Tensor& x) {
  const char* op = "allToAll";
  check_cpu(op, "x", x);
  if (x.ndim() < 1 || x.dim(0) != size()) {
    fail(Code::Shape, std::string(op) + ": expected x [" + std::to_string(size()) +
                          ", ...] (one block per rank) but received " + x.describe());
  }
  return [self = shared_from_this(), x]() {
    GlooGroup& g = *self;
    Collective c(g, *g.impl_, "allToAll");
    return c.run([&]() -> Tensor {
      c.agree(kAllToAll, x.dtype, x.numel(), 0);
      Tensor out = empty(x.dtype, x.shape);
      if (x.bytes() == 0) return out;
      if (g.size() == 1) {
        std::memcpy(out.raw(), x.raw(), x.bytes());
        return out;
      }
      gloo::AlltoallOptions o(c.ctx());
      o.setInput<char>(static_cast<char*>(x.raw()), x.bytes());
      o.setOutput<char>(static_cast<char*>(out.raw()), out.bytes());
      o.setTimeout(c.left());
      gloo::alltoall(o);
      return out;
    });
  };
}

Task<Unit> GlooGroup::all_reduce(const Tensor& t, ReduceOp op) {
  const char* name = "allReduce";
  check_cpu(name, "t", t);
  if (op == ReduceOp::Avg && !is_float(t.dtype)) {
    fail(Code::Dtype, std::string(name) + ": op \"avg\" needs a float tensor but received " + t.describe());
  }
  return [self = shared_from_this(), t, op]() {
    GlooGroup& g = *self;
    Collective c(g, *g.impl_, "allReduce");
    return c.run([&]() -> Unit {
      c.agree(kAllReduce, t.dtype, t.numel(), int64_t(op));
      const size_t n = size_t(t.numel());
      if (n == 0 || g.size() == 1) return Unit{};
      const ReduceOp gop = op == ReduceOp::Avg ? ReduceOp::Sum : op;
      switch (t.dtype) {
        case DType::I32:
          allreduce_raw(c.ctx(), t.data<int32_t>(), n, gop, c.left());
          break;
        case DType::I64:
          allreduce_raw(c.ctx(), t.data<int64_t>(), n, gop, c.left());
          break;
        case DType::F32: {
          float* p = t.data<float>();
          allreduce_raw(c.ctx(), p, n, gop, c.left());
          if (op == ReduceOp::Avg) {
            const float w = float(g.size());
            for (size_t i = 0; i < n; ++i) p[i] /= w;
          }
          break;
        }
        case DType::BF16:
        case DType::F16: {
          // Reduced in float32 (every rank gets the same float32 sums, so the same rounding).
          std::vector<float> f(n);
          to_f32(t.raw(), t.dtype, f.data(), int64_t(n));
          allreduce_raw(c.ctx(), f.data(), n, gop, c.left());
          if (op == ReduceOp::Avg) {
            const float w = float(g.size());
            for (float& v : f) v /= w;
          }
          from_f32(f.data(), t.raw(), t.dtype, int64_t(n));
          break;
        }
      }
      return Unit{};
    });
  };
}

Task<Unit> GlooGroup::broadcast(const Tensor& t, int root) {
  const char* name = "broadcast";
  check_cpu(name, "t", t);
  if (root < 0 || root >= size()) {
    fail(Code::Value, std::string(name) + ": expected root in [0, " + std::to_string(size()) + ") but received " +
                          std::to_string(root));
  }
  return [self = shared_from_this(), t, root]() {
    GlooGroup& g = *self;
    Collective c(g, *g.impl_, "broadcast");
    return c.run([&]() -> Unit {
      c.agree(kBroadcast, t.dtype, t.numel(), root);
      if (t.bytes() == 0 || g.size() == 1) return Unit{};
      gloo::BroadcastOptions o(c.ctx());
      o.setOutput<char>(static_cast<char*>(t.raw()), t.bytes());
      o.setRoot(root);
      o.setTimeout(c.left());
      gloo::broadcast(o);
      return Unit{};
    });
  };
}

Task<Unit> GlooGroup::barrier() {
  return [self = shared_from_this()]() {
    GlooGroup& g = *self;
    Collective c(g, *g.impl_, "barrier");
    return c.run([&]() -> Unit {
      if (g.size() == 1) return Unit{};
      gloo::BarrierOptions o(c.ctx());
      o.setTimeout(c.left());
      gloo::barrier(o);
      return Unit{};
    });
  };
}

void GlooGroup::destroy() {
  if (destroyed_.exchange(true)) return;
  std::shared_ptr<Context> ctx;
  bool busy;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    ctx = std::move(impl_->context);
    busy = impl_->busy;
  }
  // A collective in progress holds its own reference; aborting wakes it. The
  // connections close when the last reference goes; peers waiting for rows in
  // shared memory learn of it at once.
  impl_->shm_failed();
  if (ctx && busy) impl_->abort_connections();
}

#else  // built without Gloo

struct GlooGroup::Impl {};

std::shared_ptr<GlooGroup> GlooGroup::create(std::shared_ptr<Store>, std::string, int, std::vector<int>, GroupOptions) {
  fail(Code::Unsupported, "process group: this build of moe-ep has no Gloo (install libgloo-dev and rebuild)");
}
GlooGroup::GlooGroup(std::shared_ptr<Store> store, std::string prefix, int rank, std::vector<int> world_ranks,
                     GroupOptions options)
    : store_(std::move(store)),
      prefix_(std::move(prefix)),
      rank_(rank),
      world_ranks_(std::move(world_ranks)),
      options_(std::move(options)) {}
GlooGroup::~GlooGroup() = default;
std::optional<std::pair<Code, std::string>> GlooGroup::fault() const { return std::nullopt; }
std::string GlooGroup::address() const { return options_.hostname; }
bool GlooGroup::shared_memory() const { return false; }
Task<Unit> GlooGroup::connect() { fail(Code::Unsupported, "process group: built without Gloo"); }
std::shared_ptr<GlooGroup> GlooGroup::subgroup(const std::vector<int>&, std::optional<Millis>) {
  fail(Code::Unsupported, "process group: built without Gloo");
}
Task<AllToAllVResult> GlooGroup::all_to_all_v(const Tensor&, std::vector<int64_t>,
                                              std::optional<std::vector<int64_t>>) {
  fail(Code::Unsupported, "process group: built without Gloo");
}
Task<AllToAllVResult> GlooGroup::all_to_all_v_chunks(const Tensor&, std::vector<int64_t>,
                                                     std::optional<std::vector<int64_t>>, AllToAllVChunks) {
  fail(Code::Unsupported, "process group: built without Gloo");
}
Task<Tensor> GlooGroup::all_to_all(const Tensor&) { fail(Code::Unsupported, "process group: built without Gloo"); }
Task<AllGatherVResult> GlooGroup::all_gather_v(const Tensor&) {
  fail(Code::Unsupported, "process group: built without Gloo");
}
Task<Tensor> GlooGroup::reduce_scatter_v(const Tensor&, std::vector<int64_t>) {
  fail(Code::Unsupported, "process group: built without Gloo");
}
Task<Unit> GlooGroup::all_reduce(const Tensor&, ReduceOp) {
  fail(Code::Unsupported, "process group: built without Gloo");
}
Task<Unit> GlooGroup::broadcast(const Tensor&, int) { fail(Code::Unsupported, "process group: built without Gloo"); }
Task<Unit> GlooGroup::barrier() { fail(Code::Unsupported, "process group: built without Gloo"); }
void GlooGroup::destroy() { destroyed_ = true; }

#endif

}  // namespace moe::comm
