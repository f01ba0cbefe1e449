#include "gloo_store.h"

#ifdef MOE_EP_WITH_GLOO
#include <algorithm>

#include "../core/error.h"

namespace moe::comm {
namespace {

using Clock = std::chrono::steady_clock;
// A wait is cut into slices this long so that destroying the group ends it soon.
constexpr Millis kSlice{100};

}  // namespace

GlooStoreAdapter::GlooStoreAdapter(std::shared_ptr<comm::Store> store, std::string prefix, Clock::time_point deadline,
                                   const std::atomic<bool>* cancelled)
    : store_(std::move(store)), prefix_(std::move(prefix)), deadline_(deadline), cancelled_(cancelled) {}

std::vector<std::string> GlooStoreAdapter::prefixed(const std::vector<std::string>& keys) const {
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const auto& k : keys) out.push_back(prefix_ + k);
  return out;
}

void GlooStoreAdapter::set(const std::string& key, const std::vector<char>& data) {
  store_->set(prefix_ + key, Bytes(data.begin(), data.end()));
}

std::vector<char> GlooStoreAdapter::get(const std::string& key) {
  wait_prefixed({prefix_ + key}, deadline_);
  Bytes v = store_->get(prefix_ + key, Millis(1000));
  std::vector<char> out(v.begin(), v.end());
  read_[key] = out;
  return out;
}

void GlooStoreAdapter::wait(const std::vector<std::string>& keys) { wait_prefixed(prefixed(keys), deadline_); }

void GlooStoreAdapter::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  wait_prefixed(prefixed(keys), std::min(deadline_, deadline_after(timeout)));
}

void GlooStoreAdapter::wait_prefixed(const std::vector<std::string>& keys, Clock::time_point until) {
  for (;;) {
    if (cancelled_ && cancelled_->load())
      fail(Code::Disposed, "the process group was destroyed while it was connecting");
    auto now = Clock::now();
    auto left = std::chrono::duration_cast<Millis>(until - now);
    if (left <= Millis(0)) {
      std::string missing;
      for (const auto& k : keys) {
        if (store_->check({k})) continue;
        missing += (missing.empty() ? "" : ", ") + describe_key(k.substr(prefix_.size()));
      }
      if (missing.empty()) return;
      fail(Code::Timeout, "the store keys " + missing + " of the group's rendezvous were not set in time");
    }
    try {
      store_->wait(keys, std::min(left, kSlice));
      return;
    } catch (const Error& e) {
      if (e.code() != Code::Timeout) throw;
    }
  }
}

}  // namespace moe::comm
#endif
