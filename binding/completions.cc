#include "completions.h"

#include <utility>

namespace moe::binding {

std::shared_ptr<Mailbox> Mailbox::create(Napi::Env env) {
  auto mb = std::shared_ptr<Mailbox>(new Mailbox());
  // The function holds its own reference, so `context` is valid as long as it can be called.
  auto* hold = new std::shared_ptr<Mailbox>(mb);
  napi_value name = Napi::String::New(env, "moe-ep completion");
  napi_status s = napi_create_threadsafe_function(
      env, nullptr, nullptr, name, 0, 1, hold,
      [](napi_env, void* finalize_data, void*) { delete static_cast<std::shared_ptr<Mailbox>*>(finalize_data); }, hold,
      drain, &mb->tsfn_);
  if (s != napi_ok) {
    delete hold;
    throw Napi::Error::New(env, "moe-ep: could not create the completion queue");
  }
  napi_unref_threadsafe_function(env, mb->tsfn_);  // only outstanding calls keep the loop alive
  return mb;
}

void Mailbox::post(std::shared_ptr<Completion> c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (open_) {
      const bool wake = ready_.empty();  // else a wake-up is already on its way
      ready_.push_back(std::move(c));
      if (wake) napi_call_threadsafe_function(tsfn_, nullptr, napi_tsfn_nonblocking);
      return;
    }
  }
  c.reset();  // the environment is gone: drop the result here, outside the lock
}

void Mailbox::expect(Napi::Env env, bool on_stream) {
  if (outstanding_++ == 0) napi_ref_threadsafe_function(env, tsfn_);
  if (on_stream) ++stream_outstanding_;
}

void Mailbox::settled(Napi::Env env, bool on_stream) {
  if (on_stream) --stream_outstanding_;
  if (--outstanding_ == 0 && open_) napi_unref_threadsafe_function(env, tsfn_);
}

void Mailbox::drain(napi_env env, napi_value, void* context, void*) {
  if (env == nullptr) return;  // the function is being torn down
  Mailbox* mb = static_cast<std::shared_ptr<Mailbox>*>(context)->get();
  std::vector<std::shared_ptr<Completion>> batch;
  {
    std::lock_guard<std::mutex> lock(mb->mu_);
    if (!mb->open_) return;
    batch.swap(mb->ready_);
  }
  Napi::Env e(env);
  for (auto& c : batch) {
    try {
      c->deliver(e);
    } catch (...) {  // deliver settles the Promise itself; nothing may escape into Node
    }
    mb->settled(e, c->on_stream);
    c.reset();
  }
}

void Mailbox::close() {
  std::vector<std::shared_ptr<Completion>> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!open_) return;
    open_ = false;
    dropped.swap(ready_);
  }
  napi_release_threadsafe_function(tsfn_, napi_tsfn_abort);
}

}  // namespace moe::binding
