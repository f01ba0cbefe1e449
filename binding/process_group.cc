// createGlooGroup(store, options) and createNcclGroup(store, options) ->
// Promise<NativeProcessGroup>: one handle over either backend
// (cpp/comm/process_group.h), whose collectives return Promises settled from
// the group's own thread. Glue only: the policy lives in the core and in
// lib/comm/process-group.ts.
#include <cmath>
#include <cstdint>
#include <memory>

#include "../cpp/comm/gloo_group.h"
#include "../cpp/comm/nccl_group.h"
#include "addon.h"
#include "convert.h"
#include "queue_async.h"
#include "store_handle.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

using GroupPtr = std::shared_ptr<comm::ProcessGroup>;
using CtorRef = std::shared_ptr<Napi::FunctionReference>;

// What the constructor receives (as an External): the connected group and the class itself, for sub-groups.
struct Init {
  GroupPtr group;
  CtorRef ctor;
};

std::vector<int64_t> counts_arg(Napi::Value v, const char* what) {
  Napi::Env env = v.Env();
  if (!v.IsArray())
    throw make_error(env, Code::Value, std::string("allToAllV: expected ") + what + " to be an array of integers");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int64_t> out;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : NAN;
    if (!(std::isfinite(d) && d == std::floor(d) && std::fabs(d) <= 9007199254740991.0)) {
      throw make_error(env, Code::Value, std::string("allToAllV: expected ") + what + " to hold integers");
    }
    out.push_back(int64_t(d));
  }
  return out;
}

std::vector<int> ranks_arg(Napi::Value v, const char* what) {
  Napi::Env env = v.Env();
  if (!v.IsArray()) throw make_error(env, Code::Value, std::string("expected ") + what + " to be an array of ranks");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<int> out;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : NAN;
    if (!(d >= 0 && d <= INT32_MAX && d == std::floor(d))) {
      throw make_error(env, Code::Value, std::string("expected ") + what + " to hold non-negative integers");
    }
    out.push_back(int(d));
  }
  return out;
}

comm::Millis timeout_option(Napi::Object o, comm::Millis fallback) {
  double ms = get_number(o, "timeoutMs", double(fallback.count()));
  if (!(ms >= 1 && ms <= 9.0e15) || ms != std::floor(ms)) {
    throw make_error(o.Env(), Code::Value, "process group: expected timeoutMs to be an integer >= 1");
  }
  return comm::Millis(int64_t(ms));
}

class NativeProcessGroup : public Napi::ObjectWrap<NativeProcessGroup> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeProcessGroup",
                       {
                           InstanceMethod<&NativeProcessGroup::AllToAllV>("allToAllV"),
                           InstanceMethod<&NativeProcessGroup::AllToAll>("allToAll"),
                           InstanceMethod<&NativeProcessGroup::AllGatherV>("allGatherV"),
                           InstanceMethod<&NativeProcessGroup::ReduceScatterV>("reduceScatterV"),
                           InstanceMethod<&NativeProcessGroup::AllReduce>("allReduce"),
                           InstanceMethod<&NativeProcessGroup::Broadcast>("broadcast"),
                           InstanceMethod<&NativeProcessGroup::Barrier>("barrier"),
                           InstanceMethod<&NativeProcessGroup::NewGroup>("newGroup"),
                           InstanceMethod<&NativeProcessGroup::Destroy>("destroy"),
                           InstanceAccessor<&NativeProcessGroup::GetRank>("rank"),
                           InstanceAccessor<&NativeProcessGroup::GetSize>("size"),
                           InstanceAccessor<&NativeProcessGroup::GetRanks>("ranks"),
                           InstanceAccessor<&NativeProcessGroup::GetName>("name"),
                           InstanceAccessor<&NativeProcessGroup::GetTimeoutMs>("timeoutMs"),
                           InstanceAccessor<&NativeProcessGroup::GetHostname>("hostname"),
                           InstanceAccessor<&NativeProcessGroup::GetDevice>("device"),
                           InstanceAccessor<&NativeProcessGroup::GetDestroyed>("destroyed"),
                           InstanceAccessor<&NativeProcessGroup::GetFault>("fault"),
                           InstanceAccessor<&NativeProcessGroup::GetSharedMemory>("sharedMemory"),
                       });
  }

  // Only createGlooGroup and newGroup construct these.
  explicit NativeProcessGroup(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeProcessGroup>(info) {
    if (info.Length() != 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "NativeProcessGroup is made by createGlooGroup(store, options)");
    }
    Init* init = info[0].As<Napi::External<Init>>().Data();
    group_ = init->group;
    ctor_ = init->ctor;
  }

  // A Promise of a new handle once `group` has connected.
  static Napi::Value Connect(Napi::Env env, GroupPtr group, CtorRef ctor) {
    data(env).adopt_group(group);  // destroyed with the environment, which wakes a rendezvous or collective
    auto submit = [group](std::function<void()> w) { group->submit(std::move(w)); };
    return run_queued_async(env, submit, group->connect(), [group, ctor](Napi::Env env, comm::Unit&) -> Napi::Value {
      Init init{group, ctor};
      return ctor->New({Napi::External<Init>::New(env, &init)});
    });
  }

 private:
  Napi::Value AllToAllV(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] {
      Tensor x = NativeTensor::From(info[0], "x");
      std::vector<int64_t> send = counts_arg(info[1], "sendCounts");
      std::optional<std::vector<int64_t>> expected;
      if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull())
        expected = counts_arg(info[2], "recvCounts");
      // allToAllV(x, sendCounts, recvCounts?, { sendChunks?, recvChunks? }?)
      comm::AllToAllVChunks chunks;
      if (info.Length() > 3 && info[3].IsObject()) {
        Napi::Object c = info[3].As<Napi::Object>();
        if (!c.Get("sendChunks").IsUndefined()) chunks.send = counts_arg(c.Get("sendChunks"), "sendChunks");
        if (!c.Get("recvChunks").IsUndefined()) chunks.recv = counts_arg(c.Get("recvChunks"), "recvChunks");
      }
      auto task = chunks.send.empty() && chunks.recv.empty()
                      ? group_->all_to_all_v(x, std::move(send), std::move(expected))
                      : group_->all_to_all_v_chunks(x, std::move(send), std::move(expected), std::move(chunks));
      return run(env, task, [](Napi::Env env, comm::AllToAllVResult& r) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("output", NativeTensor::Adopt(env, r.output));
        Napi::Array counts = Napi::Array::New(env, r.recv_counts.size());
        for (size_t i = 0; i < r.recv_counts.size(); ++i)
          counts.Set(uint32_t(i), Napi::Number::New(env, double(r.recv_counts[i])));
        o.Set("recvCounts", counts);
        return o;
      });
    });
  }

  Napi::Value AllToAll(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] {
      auto task = group_->all_to_all(NativeTensor::From(info[0], "x"));
      return run(env, task, [](Napi::Env env, Tensor& out) -> Napi::Value { return NativeTensor::Adopt(env, out); });
    });
  }

  Napi::Value AllGatherV(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] {
      auto task = group_->all_gather_v(NativeTensor::From(info[0], "x"));
      return run(env, task, [](Napi::Env env, comm::AllGatherVResult& r) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("output", NativeTensor::Adopt(env, r.output));
        Napi::Array counts = Napi::Array::New(env, r.counts.size());
        for (size_t i = 0; i < r.counts.size(); ++i)
          counts.Set(uint32_t(i), Napi::Number::New(env, double(r.counts[i])));
        o.Set("counts", counts);
        return o;
      });
    });
  }

  Napi::Value ReduceScatterV(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] {
      Tensor x = NativeTensor::From(info[0], "x");
      std::vector<int64_t> counts = counts_arg(info[1], "counts");
      return run(env, group_->reduce_scatter_v(x, std::move(counts)),
                 [](Napi::Env env, Tensor& out) -> Napi::Value { return NativeTensor::Adopt(env, out); });
    });
  }

  Napi::Value AllReduce(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] {
      Tensor t = NativeTensor::From(info[0], "t");
      comm::ReduceOp op = comm::parse_reduce_op(info[1].IsUndefined() ? "sum" : to_string(info[1], "op"));
      return run(env, group_->all_reduce(t, op), undefined);
    });
  }

  Napi::Value Broadcast(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] {
      Tensor t = NativeTensor::From(info[0], "t");
      if (!info[1].IsNumber()) throw make_error(env, Code::Value, "broadcast: expected root to be a rank");
      double root = info[1].As<Napi::Number>().DoubleValue();
      if (root != std::floor(root) || !(root >= 0 && root <= INT32_MAX)) {
        throw make_error(env, Code::Value, "broadcast: expected root to be a rank");
      }
      return run(env, group_->broadcast(t, int(root)), undefined);
    });
  }

  Napi::Value Barrier(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] { return run(env, group_->barrier(), undefined); });
  }

  // newGroup(members, { timeoutMs? }): members are ranks of this group.
  Napi::Value NewGroup(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guard(env, [&] {
      live(env, "newGroup");
      std::vector<int> members = ranks_arg(info[0], "ranks");
      Napi::Object o = options_arg(info, 1);
      comm::Millis timeout = timeout_option(o, group_->timeout());
      return Connect(env, group_->new_group(members, timeout), ctor_);
    });
  }

  Napi::Value Destroy(const Napi::CallbackInfo& info) {
    if (group_) group_->destroy();
    return info.Env().Undefined();
  }

  Napi::Value GetRank(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), group_->rank()); }
  Napi::Value GetSize(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), group_->size()); }
  Napi::Value GetRanks(const Napi::CallbackInfo& info) {
    const auto& r = group_->world_ranks();
    Napi::Array a = Napi::Array::New(info.Env(), r.size());
    for (size_t i = 0; i < r.size(); ++i) a.Set(uint32_t(i), Napi::Number::New(info.Env(), r[i]));
    return a;
  }
  Napi::Value GetName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), group_->name()); }
  Napi::Value GetTimeoutMs(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(group_->timeout().count()));
  }
  Napi::Value GetHostname(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), group_->address()); }
  Napi::Value GetDevice(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), group_->device().str());
  }
  Napi::Value GetSharedMemory(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), group_->shared_memory());
  }
  Napi::Value GetDestroyed(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), group_->destroyed());
  }
  // The error that broke the group ({ code, message }), or null.
  Napi::Value GetFault(const Napi::CallbackInfo& info) {
    auto f = group_->fault();
    if (!f) return info.Env().Null();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("code", Napi::String::New(info.Env(), code_name(f->first)));
    o.Set("message", Napi::String::New(info.Env(), f->second));
    return o;
  }

  void live(Napi::Env env, const char* op) {
    if (group_->destroyed())
      throw make_error(env, Code::Disposed, std::string(op) + ": the process group was destroyed");
  }

  static Napi::Value undefined(Napi::Env env, comm::Unit&) { return env.Undefined(); }

  template <class R, class ToJs>
  Napi::Value run(Napi::Env env, Task<R> task, ToJs to_js) {
    GroupPtr g = group_;
    return run_queued_async(
        env, [g](std::function<void()> w) { g->submit(std::move(w)); }, std::move(task), to_js);
  }

  GroupPtr group_;
  CtorRef ctor_;
};

// The world a create call names: its ranks 0..worldSize-1 and this rank.
std::pair<int, std::vector<int>> world_arg(Napi::Env env, Napi::Object o) {
  double world = get_number(o, "worldSize", 1);
  double rank = get_number(o, "rank", 0);
  if (!(world >= 1 && world <= 1 << 20 && world == std::floor(world))) {
    throw make_error(env, Code::Value, "process group: expected worldSize to be an integer >= 1");
  }
  if (!(rank >= 0 && rank < world && rank == std::floor(rank))) {
    throw make_error(env, Code::Value, "process group: expected rank in [0, worldSize)");
  }
  std::vector<int> ranks(static_cast<size_t>(world));
  for (size_t i = 0; i < ranks.size(); ++i) ranks[i] = int(i);
  return {int(rank), ranks};
}

// create(store, options) -> Promise<NativeProcessGroup>, with `make` building the backend's group.
template <class Make>
Napi::Function creator(Napi::Env env, CtorRef ctor, const char* name, Make make) {
  return Napi::Function::New(
      env,
      [ctor, make](const Napi::CallbackInfo& info) -> Napi::Value {
        Napi::Env env = info.Env();
        return guard(env, [&]() -> Napi::Value {
          auto store = NativeStore::From(info[0], "store");
          Napi::Object o = options_arg(info, 1);
          auto [rank, ranks] = world_arg(env, o);
          GroupPtr group = make(store, get_string(o, "prefix", "moe-ep/pg"), rank, ranks, o);
          return NativeProcessGroup::Connect(env, group, ctor);
        });
      },
      name);
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  auto ctor = std::make_shared<Napi::FunctionReference>(Napi::Persistent(NativeProcessGroup::Define(env)));
  // createGlooGroup(store, { rank, worldSize, prefix, hostname, timeoutMs })
  exports.Set("createGlooGroup",
              creator(env, ctor, "createGlooGroup",
                      [](auto store, std::string prefix, int rank, std::vector<int> ranks, Napi::Object o) {
                        comm::GroupOptions opts;
                        opts.hostname = get_string(o, "hostname", opts.hostname);
                        opts.timeout = timeout_option(o, opts.timeout);
                        return GroupPtr(comm::GlooGroup::create(store, prefix, rank, ranks, opts));
                      }));
  // createNcclGroup(store, { rank, worldSize, prefix, device, timeoutMs }).
  exports.Set("createNcclGroup",
              creator(env, ctor, "createNcclGroup",
                      [](auto store, std::string prefix, int rank, std::vector<int> ranks, Napi::Object o) {
                        comm::NcclGroupOptions opts;
                        opts.timeout = timeout_option(o, opts.timeout);
                        Device device = Device::parse(get_string(o, "device", "cuda:0"));
                        return GroupPtr(comm::NcclGroup::create(store, prefix, rank, ranks, device, opts));
                      }));
});

}  // namespace
}  // namespace moe::binding
