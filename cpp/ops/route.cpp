#include "route.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "../core/op_clock.h"
#include "../core/check.h"
#include "../core/parallel.h"
#include "cuda_ops.h"

namespace moe::ops {

namespace {

// Tokens are processed in blocks whose size depends only on the token count;
// each block keeps its own partial sums, added up in block order afterwards,
// so the losses are bitwise the same whatever the thread count.
constexpr int64_t kMinBlock = 64;
constexpr int64_t kMaxBlocks = 1024;
int64_t block_size(int64_t tokens) { return std::max(kMinBlock, (tokens + kMaxBlocks - 1) / kMaxBlocks); }

// Added to the sum of the chosen sigmoid scores before renormalising (Megatron-Core).
constexpr float kSigmoidRenormEps = 1e-20f;

std::string str(int64_t v) { return std::to_string(v); }

bool row_finite(const float* l, int64_t e, int64_t* first_bad) {
  bool ok = true;
  for (int64_t i = 0; i < e; ++i) ok &= std::isfinite(l[i]);
  if (ok) return true;
  for (int64_t i = 0; i < e; ++i)
    if (!std::isfinite(l[i])) {
      *first_bad = i;
      break;
    }
  return false;
}

template <class To, class From>
inline To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

// e^x for x <= 0 in float32, written so that loops over it vectorise (Cephes expf: e^x = 2^n · e^r,
// n = round(x / ln 2), |r| <= ln 2 / 2, e^r by a degree-7 polynomial; about 1 ulp). Results in the
// subnormal range round correctly; below e^-104 they are 0, as for std::exp. Every call site
// passes x <= 0 (logit − row max, logit − logsumexp, −|logit|). The clamp and selects work on the
// bits: float compares would keep GCC from vectorising under -ftrapping-math.
inline float exp_f32(float x) {
  // Non-positive floats order by their unsigned bits: clamp x to >= -104 (0xC2D00000), where e^x < 2^-150.
  x = bits_as<float>(std::min(bits_as<uint32_t>(x), 0xC2D00000u));
  constexpr float kRound = 12582912.0f;  // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits
  const float t = x * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  const int32_t ni = bits_as<int32_t>(t) - 0x4B400000;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  // 2^n as two factors, each a normal float, for n in [-150, 0].
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  return p * bits_as<float>((n1 + 127) << 23) * bits_as<float>((n2 + 127) << 23);
}

// a where v's sign bit is set, else b.
inline float if_negative(float v, float a, float b) {
  const int32_t m = bits_as<int32_t>(v) >> 31;
  return bits_as<float>((bits_as<int32_t>(a) & m) | (bits_as<int32_t>(b) & ~m));
}

// Sums and maxima over a row in kLanes interleaved partial results, combined in a fixed order:
// vectorisable without reassociating anything, so the result never depends on the build's vector width.
constexpr int64_t kLanes = 8;

inline float row_sum(const float* v, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += v[i + j];
  for (int64_t j = 0; i < n; ++i, ++j) acc[j] += v[i];
  float s = 0;
  for (int64_t j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

inline float row_dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  for (int64_t j = 0; i < n; ++i, ++j) acc[j] += a[i] * b[i];
  float s = 0;
  for (int64_t j = 0; j < kLanes; ++j) s += acc[j];
  return s;
}

inline float row_max(const float* v, int64_t n) {
  float acc[kLanes];
  for (int64_t j = 0; j < kLanes; ++j) acc[j] = v[0];
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t j = 0; j < kLanes; ++j) acc[j] = v[i + j] > acc[j] ? v[i + j] : acc[j];
  for (int64_t j = 0; i < n; ++i, ++j) acc[j] = v[i] > acc[j] ? v[i] : acc[j];
  float m = acc[0];
  for (int64_t j = 1; j < kLanes; ++j) m = acc[j] > m ? acc[j] : m;
  return m;
}

// sigmoid(l) and 1 − sigmoid(l) from z = e^{−|l|}: 1/(1+z) and z/(1+z), which never overflow
// and keep full relative precision on both sides of 0.
inline float sigmoid_f32(float l) {
  const float z = exp_f32(-std::fabs(l));
  return if_negative(l, z, 1.0f) / (1.0f + z);
}
inline float sigmoid_complement_f32(float l) {
  const float z = exp_f32(-std::fabs(l));
  return if_negative(l, 1.0f, z) / (1.0f + z);
}

// Scores of one row (softmax or sigmoid) into s; tmp is scratch of e floats. Returns logsumexp of the row.
float score_row(const float* l, float* s, float* tmp, int64_t e, ScoreFunction f) {
  const float mx = row_max(l, e);
  float* ex = f == ScoreFunction::Softmax ? s : tmp;
  for (int64_t i = 0; i < e; ++i) ex[i] = exp_f32(l[i] - mx);
  const float sum = row_sum(ex, e);
  if (f == ScoreFunction::Softmax) {
    for (int64_t i = 0; i < e; ++i) s[i] = s[i] / sum;
  } else {
    for (int64_t i = 0; i < e; ++i) s[i] = sigmoid_f32(l[i]);
  }
  return mx + std::log(sum);
}

// Keeps (vals, ids), n of at most cap entries, sorted best first. Candidates
// arrive in increasing index order, so an equal value never displaces an
// earlier one: ties go to the lower index.
template <class Id>
inline void push_top(float v, Id id, int64_t cap, int64_t& n, float* vals, Id* ids) {
  if (n == cap) {
    if (!(v > vals[n - 1])) return;
    --n;
  }
  int64_t p = n;
  while (p > 0 && v > vals[p - 1]) {
    vals[p] = vals[p - 1];
    ids[p] = ids[p - 1];
    --p;
  }
  vals[p] = v;
  ids[p] = id;
  ++n;
}

// Per-chunk scratch: nothing is allocated per token.
struct Scratch {
  std::vector<float> keys, tmp, top_vals, group_top, group_vals;
  std::vector<int32_t> group_top_ids, group_ids;
  Scratch(int64_t e, int64_t k, int64_t per_group_top, int64_t topk_groups)
      : keys(size_t(e)),
        tmp(size_t(e)),
        top_vals(size_t(k)),
        group_top(size_t(std::max<int64_t>(per_group_top, 1))),
        group_vals(size_t(std::max<int64_t>(topk_groups, 1))),
        group_top_ids(size_t(std::max<int64_t>(per_group_top, 1))),
        group_ids(size_t(std::max<int64_t>(topk_groups, 1))) {}
};

// The top-k experts of key (docs/math.md#selection-and-tie-breaking), best first.
void select_experts(const float* key, int64_t e, const RouteOptions& o, Scratch& w, int32_t* idx) {
  const int64_t k = o.top_k;
  int64_t n = 0;
  if (o.num_groups == 0) {
    for (int64_t i = 0; i < e; ++i) push_top(key[i], int32_t(i), k, n, w.top_vals.data(), idx);
    return;
  }
  const int64_t g = o.num_groups, per = e / g, m = std::max<int64_t>(1, k / o.topk_groups);
  int64_t ng = 0;
  for (int64_t gi = 0; gi < g; ++gi) {
    int64_t nt = 0;
    for (int64_t i = gi * per; i < (gi + 1) * per; ++i)
      push_top(key[i], int32_t(i), m, nt, w.group_top.data(), w.group_top_ids.data());
    float score = 0;
    for (int64_t j = 0; j < nt; ++j) score += w.group_top[size_t(j)];
    push_top(score, int32_t(gi), o.topk_groups, ng, w.group_vals.data(), w.group_ids.data());
  }
  // Visit the chosen groups in increasing order so experts arrive by increasing index.
  std::sort(w.group_ids.begin(), w.group_ids.begin() + ng);
  for (int64_t j = 0; j < ng; ++j) {
    const int64_t gi = w.group_ids[size_t(j)];
    for (int64_t i = gi * per; i < (gi + 1) * per; ++i) push_top(key[i], int32_t(i), k, n, w.top_vals.data(), idx);
  }
}

void check_count(const char* op, int64_t t, int64_t k) {
  if (t * k > INT32_MAX)
    fail(Code::Value, std::string(op) + ": expected tokens · topK <= " + str(INT32_MAX) + " but received " + str(t) +
                          " · " + str(k));
}

}  // namespace

void check_route_options(const char* op, int64_t e, const RouteOptions& o) {
  if (o.top_k < 1) fail(Code::Value, std::string(op) + ": expected topK >= 1 but received " + str(o.top_k));
  if (o.top_k > e)
    fail(Code::Value, std::string(op) + ": expected topK <= numExperts (" + str(e) + ") but received " + str(o.top_k));
  const bool has_g = o.num_groups != 0, has_tg = o.topk_groups != 0;
  if (has_g != has_tg)
    fail(Code::Value, std::string(op) + ": expected numGroups and topkGroups together but received " +
                          (has_g ? "numGroups " + str(o.num_groups) + " without topkGroups"
                                 : "topkGroups " + str(o.topk_groups) + " without numGroups"));
  if (!has_g) return;
  if (o.num_groups < 1 || e % o.num_groups != 0)
    fail(Code::Value, std::string(op) + ": expected numGroups to divide numExperts (" + str(e) + ") but received " +
                          str(o.num_groups));
  if (o.topk_groups < 1 || o.topk_groups > o.num_groups)
    fail(Code::Value, std::string(op) + ": expected topkGroups in [1, numGroups (" + str(o.num_groups) +
                          ")] but received " + str(o.topk_groups));
  const int64_t reachable = o.topk_groups * (e / o.num_groups);
  if (o.top_k > reachable)
    fail(Code::Value, std::string(op) + ": expected topK <= topkGroups · numExperts / numGroups (" + str(reachable) +
                          ") but received " + str(o.top_k));
}

Task<RouteResult> route(const Tensor& logits, const Tensor& expert_bias, const RouteOptions& options) {
  const char* op = "route";
  check_dtype(op, "logits", logits, {DType::F32});
  check_shape(op, "logits", logits, {-1, -1}, "[tokens, numExperts]");
  const int64_t e = logits.dim(1);
  if (expert_bias.defined()) {
    check_dtype(op, "expertBias", expert_bias, {DType::F32});
    check_shape(op, "expertBias", expert_bias, {e}, "[numExperts]");
    check_same_device(op, {{"logits", &logits}, {"expertBias", &expert_bias}});
  }
  check_route_options(op, e, options);
  check_count(op, logits.dim(0), options.top_k);
  if (options.selection_noise.defined()) {
    check_dtype(op, "selectionNoise", options.selection_noise, {DType::F32});
    check_shape(op, "selectionNoise", options.selection_noise, {logits.dim(0), e}, "[tokens, numExperts]");
    check_same_device(op, {{"logits", &logits}, {"selectionNoise", &options.selection_noise}});
    if (logits.device().kind == Device::CUDA)
      fail(Code::Unsupported, "route: expected CPU tensors with selectionNoise (it has no CUDA kernel)");
  }
  check_option(op, "noiseFrom", options.noise_from >= 0 && options.noise_from <= options.top_k,
               "an integer in [0, topK]", std::to_string(options.noise_from));
  check_option(op, "noiseFrom", options.noise_from == 0 || options.num_groups == 0, "0 with group-limited routing",
               std::to_string(options.noise_from));
  if (logits.device().kind == Device::CUDA) {
    cuda_path::check_route_supported(op, logits.dim(0), e, options.top_k, options.num_groups, options.topk_groups);
    return cuda_path::route(logits, expert_bias, options);
  }

  Task<RouteResult> task = [logits, expert_bias, o = options] {
    OpTimer timer("route");
    const char* op = "route";
    const int64_t t = logits.dim(0), e = logits.dim(1), k = o.top_k;
    const bool has_bias = expert_bias.defined();
    if (has_bias) check_finite(op, "expertBias", expert_bias.data<float>(), e);
    const float* noise = o.selection_noise.defined() ? o.selection_noise.data<float>() : nullptr;
    if (noise) check_finite(op, "selectionNoise", noise, t * e);

    RouteResult r{empty(DType::I32, {t, k}),
                  empty(DType::F32, {t, k}),
                  empty(DType::F32, {t, e}),
                  zeros(DType::I32, {e}),
                  scalar_f32(0),
                  scalar_f32(0)};
    if (t == 0) return r;

    const float* lg = logits.data<float>();
    const float* bias = has_bias ? expert_bias.data<float>() : nullptr;
    int32_t* indices = r.indices.data<int32_t>();
    float* weights = r.weights.data<float>();
    float* scores = r.scores.data<float>();

    const int64_t bs = block_size(t), nblocks = (t + bs - 1) / bs;
    std::vector<double> prob_sum(size_t(nblocks * e), 0.0), z_sum(size_t(nblocks), 0.0);
    std::vector<int32_t> counts(size_t(nblocks * e), 0);
    std::vector<int64_t> bad(size_t(nblocks), -1);
    const int64_t per_group_top = o.num_groups ? std::max<int64_t>(1, k / o.topk_groups) : 0;

    parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
      Scratch w(e, k, per_group_top, o.topk_groups);
      for (int64_t b = b0; b < b1; ++b) {
        double* psum = &prob_sum[size_t(b * e)];
        int32_t* cnt = &counts[size_t(b * e)];
        double zs = 0;
        for (int64_t ti = b * bs; ti < std::min(t, (b + 1) * bs); ++ti) {
          const float* l = lg + ti * e;
          float* s = scores + ti * e;
          int64_t col = 0;
          if (!row_finite(l, e, &col)) {
            bad[size_t(b)] = ti * e + col;
            break;
          }
          const float lse = score_row(l, s, w.tmp.data(), e, o.score);
          zs += double(lse) * double(lse);
          // P_e (docs/math.md#load-balancing-loss): p = s for softmax, s / Σ_e s for sigmoid.
          if (o.score == ScoreFunction::Softmax) {
            for (int64_t i = 0; i < e; ++i) psum[i] += s[i];
          } else {
            const double inv_q = 1.0 / double(row_sum(s, e));
            for (int64_t i = 0; i < e; ++i) psum[i] += s[i] * inv_q;
          }
          const float* key = s;
          int32_t* idx = indices + ti * k;
          if (noise && o.noise_from > 0) {
            // The first noise_from choices by the noiseless keys, the rest by the noisy ones.
            for (int64_t i = 0; i < e; ++i) w.keys[size_t(i)] = s[i] + (bias ? bias[i] : 0.0f);
            RouteOptions first = o;
            first.top_k = o.noise_from;
            select_experts(w.keys.data(), e, first, w, idx);
            const float* nz = noise + ti * e;
            int64_t n = 0;
            for (int64_t i = 0; i < e; ++i) {
              if (std::find(idx, idx + o.noise_from, int32_t(i)) != idx + o.noise_from) continue;
              push_top(l[i] + nz[i] + (bias ? bias[i] : 0.0f), int32_t(i), k - o.noise_from, n, w.top_vals.data(),
                       idx + o.noise_from);
            }
          } else if (noise) {
            const float* nz = noise + ti * e;
            for (int64_t i = 0; i < e; ++i) w.keys[size_t(i)] = l[i] + nz[i] + (bias ? bias[i] : 0.0f);
            key = w.keys.data();
          } else if (bias) {
            for (int64_t i = 0; i < e; ++i) w.keys[size_t(i)] = s[i] + bias[i];
            key = w.keys.data();
          }
          if (!(noise && o.noise_from > 0)) select_experts(key, e, o, w, idx);
          float* wt = weights + ti * k;
          float sum = 0;
          for (int64_t j = 0; j < k; ++j) {
            wt[j] = s[idx[j]];
            sum += wt[j];
            ++cnt[idx[j]];
          }
          if (o.renormalize) {
            if (o.score == ScoreFunction::Sigmoid) sum += kSigmoidRenormEps;
            for (int64_t j = 0; j < k; ++j) wt[j] /= sum;
          }
        }
        z_sum[size_t(b)] = zs;
      }
    });

    for (int64_t b = 0; b < nblocks; ++b)
      if (bad[size_t(b)] >= 0) {
        const int64_t at = bad[size_t(b)];
        fail(Code::NonFinite, std::string(op) + ": expected finite values in logits but element [" + str(at / e) +
                                  ", " + str(at % e) + "] is " + num_str(lg[at]));
      }

    int32_t* tpe = r.tokens_per_expert.data<int32_t>();
    double aux = 0, z = 0;
    for (int64_t i = 0; i < e; ++i) {
      int64_t c = 0;
      double p = 0;
      for (int64_t b = 0; b < nblocks; ++b) {
        c += counts[size_t(b * e + i)];
        p += prob_sum[size_t(b * e + i)];
      }
      tpe[i] = int32_t(c);
      aux += (double(c) / double(t * k)) * (p / double(t));
    }
    for (int64_t b = 0; b < nblocks; ++b) z += z_sum[size_t(b)];
    *r.aux_loss.data<float>() = float(double(e) * aux);
    *r.z_loss.data<float>() = float(z / double(t));
    return r;
  };
  task.cost = 8 * logits.numel();  // steps: about 8 an expert score (exp, sums, top-k)
  return task;
}

Task<Tensor> route_backward(const Tensor& logits, const Tensor& indices, const Tensor& tokens_per_expert,
                            const Tensor& dweights, const RouteBackwardOptions& options) {
  const char* op = "routeBackward";
  check_dtype(op, "logits", logits, {DType::F32});
  check_shape(op, "logits", logits, {-1, -1}, "[tokens, numExperts]");
  const int64_t t = logits.dim(0), e = logits.dim(1);
  check_dtype(op, "indices", indices, {DType::I32});
  check_shape(op, "indices", indices, {t, -1}, "[tokens, topK]");
  const int64_t k = indices.dim(1);
  if (k < 1 || k > e)
    fail(Code::Shape, std::string(op) + ": expected indices of shape [tokens, topK] with 1 <= topK <= numExperts (" +
                          str(e) + ") but received " + shape_str(indices.shape));
  check_dtype(op, "tokensPerExpert", tokens_per_expert, {DType::I32});
  check_shape(op, "tokensPerExpert", tokens_per_expert, {e}, "[numExperts]");
  if (dweights.defined()) {
    check_dtype(op, "dWeights", dweights, {DType::F32});
    check_shape(op, "dWeights", dweights, {t, k}, "[tokens, topK]");
  }
  check_same_device(
      op,
      {{"logits", &logits}, {"indices", &indices}, {"tokensPerExpert", &tokens_per_expert}, {"dWeights", &dweights}});
  check_option(op, "auxLossGrad", std::isfinite(options.aux_loss_grad), "a finite number",
               num_str(options.aux_loss_grad));
  check_option(op, "zLossGrad", std::isfinite(options.z_loss_grad), "a finite number", num_str(options.z_loss_grad));
  check_count(op, t, k);
  if (logits.device().kind == Device::CUDA) {
    cuda_path::check_route_supported(op, t, e, k, 0, 0);
    return cuda_path::route_backward(logits, indices, tokens_per_expert, dweights, options);
  }

  Task<Tensor> task = [logits, indices, tokens_per_expert, dweights, o = options] {
    OpTimer timer("routeBackward");
    const char* op = "routeBackward";
    const int64_t t = logits.dim(0), e = logits.dim(1), k = indices.dim(1);
    Tensor dlogits = empty(DType::F32, {t, e});
    if (t == 0) return dlogits;

    const float* lg = logits.data<float>();
    const int32_t* idx_all = indices.data<int32_t>();
    const float* dw_all = dweights.defined() ? dweights.data<float>() : nullptr;
    float* dl_all = dlogits.data<float>();

    // d aux / d p[t, e] = E · f_e / T, with f_e = count_e / (T · k) held constant (docs/math.md#load-balancing-loss).
    const int32_t* tpe = tokens_per_expert.data<int32_t>();
    std::vector<float> aux_grad(size_t(e), 0.0f);
    const bool has_aux = o.aux_loss_grad != 0, has_z = o.z_loss_grad != 0;
    for (int64_t i = 0; i < e; ++i) {
      if (tpe[i] < 0)
        fail(Code::Value,
             std::string(op) + ": expected tokensPerExpert >= 0 but element " + str(i) + " is " + str(tpe[i]));
      aux_grad[size_t(i)] = float(o.aux_loss_grad * double(e) * (double(tpe[i]) / double(t * k)) / double(t));
    }
    const float z_scale = float(2.0 * o.z_loss_grad / double(t));

    const int64_t nblocks = (t + kMinBlock - 1) / kMinBlock;
    std::vector<int64_t> bad_logit(size_t(nblocks), -1), bad_index(size_t(nblocks), -1);

    parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> s(static_cast<size_t>(e)), ds(static_cast<size_t>(e)), tmp(static_cast<size_t>(e));
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t ti = b * kMinBlock; ti < std::min(t, (b + 1) * kMinBlock); ++ti) {
          const float* l = lg + ti * e;
          const int32_t* idx = idx_all + ti * k;
          float* dl = dl_all + ti * e;
          int64_t col = 0;
          if (!row_finite(l, e, &col)) {
            bad_logit[size_t(b)] = ti * e + col;
            break;
          }
          bool idx_ok = true;
          for (int64_t j = 0; j < k; ++j) idx_ok &= idx[j] >= 0 && idx[j] < e;
          if (!idx_ok) {
            bad_index[size_t(b)] = ti;
            break;
          }
          const float lse = score_row(l, s.data(), tmp.data(), e, o.score);
          std::fill(ds.begin(), ds.end(), 0.0f);

          // Through the weights w_j = s[idx_j] (/ S with renormalize): ds_j = (dw_j − Σ_i dw_i w_i) / S.
          if (dw_all) {
            const float* dw = dw_all + ti * k;
            if (o.renormalize) {
              float sum = 0;
              for (int64_t j = 0; j < k; ++j) sum += s[size_t(idx[j])];
              if (o.score == ScoreFunction::Sigmoid) sum += kSigmoidRenormEps;
              float dot = 0;
              for (int64_t j = 0; j < k; ++j) dot += dw[j] * (s[size_t(idx[j])] / sum);
              for (int64_t j = 0; j < k; ++j) ds[size_t(idx[j])] += (dw[j] - dot) / sum;
            } else {
              for (int64_t j = 0; j < k; ++j) ds[size_t(idx[j])] += dw[j];
            }
          }

          // Through P: p = s (softmax) or p = s / Q, Q = Σ s (sigmoid): ds_j += (g_j − Σ_e g_e p_e) / Q.
          if (has_aux) {
            if (o.score == ScoreFunction::Softmax) {
              for (int64_t i = 0; i < e; ++i) ds[size_t(i)] += aux_grad[size_t(i)];
            } else {
              const float q = row_sum(s.data(), e);
              const float gp = row_dot(aux_grad.data(), s.data(), e) / q;
              for (int64_t i = 0; i < e; ++i) ds[size_t(i)] += (aux_grad[size_t(i)] - gp) / q;
            }
          }

          // Through the score function.
          if (o.score == ScoreFunction::Softmax) {
            const float dot = row_dot(s.data(), ds.data(), e);
            for (int64_t i = 0; i < e; ++i) dl[i] = s[size_t(i)] * (ds[size_t(i)] - dot);
          } else {
            for (int64_t i = 0; i < e; ++i) dl[i] = ds[size_t(i)] * s[size_t(i)] * sigmoid_complement_f32(l[i]);
          }

          // z-loss: d/dl (mean_t lse_t²) = 2 · lse_t · softmax(l_t) / T.
          if (has_z) {
            const float* soft = s.data();
            if (o.score == ScoreFunction::Sigmoid) {
              for (int64_t i = 0; i < e; ++i) tmp[size_t(i)] = exp_f32(l[i] - lse);
              soft = tmp.data();
            }
            const float c = z_scale * lse;
            for (int64_t i = 0; i < e; ++i) dl[i] += c * soft[i];
          }
        }
      }
    });

    for (int64_t b = 0; b < nblocks; ++b) {
      if (bad_logit[size_t(b)] >= 0) {
        const int64_t at = bad_logit[size_t(b)];
        fail(Code::NonFinite, std::string(op) + ": expected finite values in logits but element [" + str(at / e) +
                                  ", " + str(at % e) + "] is " + num_str(lg[at]));
      }
      if (bad_index[size_t(b)] >= 0) {
        const int64_t ti = bad_index[size_t(b)];
        for (int64_t j = 0; j < k; ++j) {
          const int32_t v = idx_all[ti * k + j];
          if (v < 0 || v >= e)
            fail(Code::Value, std::string(op) + ": expected indices in [0, " + str(e) + ") but element [" + str(ti) +
                                  ", " + str(j) + "] is " + str(v));
        }
      }
    }
    return dlogits;
  };
  task.cost = 8 * logits.numel();
  return task;
}

}  // namespace moe::ops
