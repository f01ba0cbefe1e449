/*
 * The layer through the C ABI, from C: moe_layer_forward and moe_layer_backward
 * must equal, bit for bit, the same layer composed here of the C ABI's ops
 * (gate, route, permute, grouped GEMMs, activation, unpermute and their
 * backwards), with shared experts and capacity; a saved forward can be
 * differentiated twice; failures set every out-parameter to NULL. Exit code 0
 * means every check passed; each failure is printed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_ep.h"

#include "check.h"

enum { T = 19, D = 16, E = 4, K = 2, F = 24, S = 8, MAXN = 4096 };

static unsigned seed = 777;
static float rnd(void) {
  seed = seed * 1664525u + 1013904223u;
  return (float)(((seed >> 8) & 0xffff) / 65536.0 - 0.5);
}

static moe_tensor make(int ndim, int64_t d0, int64_t d1, int64_t d2, float scale) {
  int64_t shape[3] = {d0, d1, d2};
  int64_t n = d0 * (ndim > 1 ? d1 : 1) * (ndim > 2 ? d2 : 1);
  float* data = malloc(sizeof(float) * (size_t)n);
  for (int64_t i = 0; i < n; i++) data[i] = scale * rnd();
  moe_tensor t = NULL;
  OK(moe_tensor_create(MOE_FLOAT32, ndim, shape, data, &t));
  free(data);
  return t;
}

static int64_t numel(moe_tensor t) {
  int nd;
  int64_t shape[8], n = 1;
  OK(moe_tensor_info(t, NULL, &nd, shape, 8));
  for (int i = 0; i < nd; i++) n *= shape[i];
  return n;
}

/* Bit-for-bit equality of two float tensors. */
static void same(moe_tensor a, moe_tensor b, const char* what) {
  if (!a || !b) {
    CHECK(a == b, "%s: one of the two is NULL", what);
    return;
  }
  int64_t n = numel(a);
  CHECK(n == numel(b), "%s: %lld and %lld elements", what, (long long)n, (long long)numel(b));
  if (n != numel(b)) return;
  float* x = malloc(sizeof(float) * (size_t)(n ? n : 1));
  float* y = malloc(sizeof(float) * (size_t)(n ? n : 1));
  OK(moe_tensor_read(a, MOE_FLOAT32, x, sizeof(float) * (size_t)n));
  OK(moe_tensor_read(b, MOE_FLOAT32, y, sizeof(float) * (size_t)n));
  CHECK(memcmp(x, y, sizeof(float) * (size_t)n) == 0, "%s: not bitwise equal", what);
  free(x);
  free(y);
}

/* The experts' FFN composed of the ABI's ops. */
static void ffn(moe_tensor x, moe_tensor counts, moe_tensor w1, moe_tensor w2, moe_activation act, moe_tensor* pre,
                moe_tensor* h, moe_tensor* y) {
  OK(moe_grouped_gemm(x, w1, counts, NULL, pre));
  OK(moe_activation_forward(*pre, act, h));
  OK(moe_grouped_gemm(*h, w2, counts, NULL, y));
}

static void ffn_backward(moe_tensor dy, moe_tensor x, moe_tensor counts, moe_tensor pre, moe_tensor h, moe_tensor w1,
                         moe_tensor w2, moe_activation act, moe_tensor* dx, moe_tensor* dw1, moe_tensor* dw2) {
  moe_tensor dh = NULL, dpre = NULL;
  OK(moe_grouped_gemm_backward(dy, h, w2, counts, &dh, dw2, NULL));
  OK(moe_activation_backward(dh, pre, act, &dpre));
  OK(moe_grouped_gemm_backward(dpre, x, w1, counts, dx, dw1, NULL));
  moe_tensor_free(dh);
  moe_tensor_free(dpre);
}

int main(void) {
  const moe_activation act = MOE_ACT_SWIGLU;
  moe_layer_config cfg = {E, K, act, MOE_SCORE_SOFTMAX, 0, 0, 0, 1.0, MOE_DROP_PROBS, 0, 0.01, 0.001};
  moe_tensor x = make(2, T, D, 0, 2), dy = make(2, T, D, 0, 2);
  moe_layer_weights w = {0};
  w.router_weight = make(2, D, E, 0, 1);
  w.w1 = make(3, E, D, 2 * F, 0.5);
  w.w2 = make(3, E, F, D, 0.5);
  w.shared_w1 = make(3, 1, D, 2 * S, 0.5);
  w.shared_w2 = make(3, 1, S, D, 0.5);
  const double loss_scale = 0.5;

  /* ---- the layer through its two entry points ---- */
  moe_tensor y = NULL, dx = NULL, dx2 = NULL;
  float aux = 0, z = 0;
  moe_layer_saved saved = NULL;
  moe_layer_grads g = {0}, g2 = {0};
  OK(moe_layer_forward(&cfg, &w, x, &y, &aux, &z, &saved));
  OK(moe_layer_backward(&cfg, &w, saved, dy, loss_scale, &dx, &g));
  OK(moe_layer_backward(&cfg, &w, saved, dy, loss_scale, &dx2, &g2));
  same(dx, dx2, "dx of a second backward");
  same(g.w1, g2.w1, "dw1 of a second backward");
  CHECK(g.b1 == NULL && g.shared_b2 == NULL, "no bias gradients without biases");

  /* ---- the same layer composed of the ops ---- */
  moe_tensor logits = NULL, idx = NULL, wts = NULL, tpe = NULL;
  float raux = 0, rz = 0;
  OK(moe_gate(x, w.router_weight, &logits));
  moe_route_options ro = {K, MOE_SCORE_SOFTMAX, 0, NULL, 0, 0};
  OK(moe_route(logits, &ro, &idx, &wts, &tpe, &raux, &rz));
  moe_permute_options po = {E, 1.0, MOE_DROP_PROBS, 0};
  moe_tensor rows = NULL, rpe = NULL, p2r = NULL, r2p = NULL;
  int64_t dropped = -1, capacity = -1;
  OK(moe_permute(x, idx, wts, &po, &rows, &rpe, &p2r, &r2p, &dropped, &capacity));
  CHECK(capacity == (int64_t)ceil((double)T * K / E), "capacity %lld", (long long)capacity);
  moe_tensor pre = NULL, h = NULL, eo = NULL, yr = NULL;
  ffn(rows, rpe, w.w1, w.w2, act, &pre, &h, &eo);
  OK(moe_unpermute(eo, p2r, wts, &yr));
  int32_t tokens = T;
  int64_t one = 1;
  moe_tensor scount = NULL, spre = NULL, sh = NULL, sy = NULL, ysum = NULL;
  OK(moe_tensor_create(MOE_INT32, 1, &one, &tokens, &scount));
  ffn(x, scount, w.shared_w1, w.shared_w2, act, &spre, &sh, &sy);
  OK(moe_add(yr, sy, &ysum));
  same(y, ysum, "output");
  CHECK(aux == (float)(0.01 * raux) && z == (float)(0.001 * rz), "losses %g %g vs %g %g", aux, z, 0.01 * raux,
        0.001 * rz);

  moe_tensor d_rows = NULL, d_w = NULL, dlogits = NULL, dxg = NULL, dwg = NULL;
  OK(moe_unpermute_backward(dy, eo, p2r, wts, &d_rows, &d_w));
  moe_route_backward_options rbo = {MOE_SCORE_SOFTMAX, 0, 0.01 * loss_scale, 0.001 * loss_scale};
  OK(moe_route_backward(logits, idx, tpe, d_w, &rbo, &dlogits));
  OK(moe_gate_backward(x, w.router_weight, dlogits, &dxg, &dwg));
  moe_tensor sdx = NULL, sdw1 = NULL, sdw2 = NULL, edx = NULL, edw1 = NULL, edw2 = NULL, dxr = NULL;
  ffn_backward(dy, x, scount, spre, sh, w.shared_w1, w.shared_w2, act, &sdx, &sdw1, &sdw2);
  ffn_backward(d_rows, rows, rpe, pre, h, w.w1, w.w2, act, &edx, &edw1, &edw2);
  OK(moe_permute_backward(edx, p2r, &dxr));
  OK(moe_axpby(dxr, dxg, 1, 1));
  OK(moe_axpby(dxr, sdx, 1, 1));
  same(dx, dxr, "dx");
  same(g.router_weight, dwg, "d router_weight");
  same(g.w1, edw1, "dw1");
  same(g.w2, edw2, "dw2");
  same(g.shared_w1, sdw1, "d shared_w1");
  same(g.shared_w2, sdw2, "d shared_w2");

  /* ---- failures: a status, a message, and every out-parameter NULL ---- */
  moe_tensor sentinel = (moe_tensor)&failures; /* anything but NULL */
  moe_tensor oy = sentinel, odx = sentinel;
  moe_layer_saved osaved = (moe_layer_saved)&failures;
  moe_layer_weights bad = w;
  bad.w2 = w.w1; /* [E, D, 2F] where [E, F, D] belongs */
  moe_status s = moe_layer_forward(&cfg, &bad, x, &oy, NULL, NULL, &osaved);
  CHECK(s == MOE_ERR_SHAPE && strstr(moe_last_error(), "w2") && strstr(moe_last_error(), "received"),
        "bad w2 gave %s (%s)", moe_status_name(s), moe_last_error());
  CHECK(oy == NULL && osaved == NULL, "forward outputs NULL on failure");
  moe_layer_grads og;
  og.w1 = og.router_weight = sentinel;
  s = moe_layer_backward(&cfg, &w, saved, x /* right shape */, 1, &odx, &og);
  CHECK(s == MOE_OK, "a backward with any dy of the right shape runs (%s)", moe_last_error());
  moe_tensor_free(odx);
  moe_layer_grads_free(&og);
  CHECK(og.w1 == NULL && og.router_weight == NULL, "moe_layer_grads_free sets NULL");
  moe_tensor wrong = make(2, T + 1, D, 0, 1);
  odx = sentinel;
  og.w1 = sentinel;
  s = moe_layer_backward(&cfg, &w, saved, wrong, 1, &odx, &og);
  CHECK(s == MOE_ERR_SHAPE, "dy of the wrong shape gave %s", moe_status_name(s));
  CHECK(odx == NULL && og.w1 == NULL, "backward outputs NULL on failure");
  s = moe_layer_backward(&cfg, &w, NULL, dy, 1, &odx, NULL);
  CHECK(s == MOE_ERR_VALUE && odx == NULL, "NULL saved gave %s", moe_status_name(s));
  moe_layer_config badcfg = cfg;
  badcfg.activation = (moe_activation)9;
  s = moe_layer_forward(&badcfg, &w, x, &oy, NULL, NULL, NULL);
  CHECK(s == MOE_ERR_VALUE && strstr(moe_last_error(), "9"), "activation 9 gave %s (%s)", moe_status_name(s),
        moe_last_error());
  moe_tensor a = sentinel, b = sentinel, c = sentinel, d = sentinel;
  s = moe_permute(x, idx, wts, NULL, &a, &b, &c, &d, NULL, NULL);
  CHECK(s == MOE_ERR_VALUE && !a && !b && !c && !d, "permute without options gave %s", moe_status_name(s));
  a = b = sentinel;
  s = moe_unpermute_backward(dy, eo, idx /* [T, K] int32 but wrong rows */, NULL, &a, &b);
  CHECK(s != MOE_OK && !a && !b, "unpermute_backward without weights gave %s", moe_status_name(s));
  a = sentinel;
  s = moe_grouped_gemm_backward(dy, rows, w.w1, rpe, &a, NULL, NULL);
  CHECK(s == MOE_ERR_SHAPE && !a, "grouped GEMM backward with dy of the wrong width gave %s (%s)", moe_status_name(s),
        moe_last_error());

  /* ---- devices ---- */
  char dev[16];
  OK(moe_tensor_device(x, dev, sizeof dev));
  CHECK(strcmp(dev, "cpu") == 0, "device %s", dev);
  int64_t shape1 = 4;
  a = sentinel;
  s = moe_tensor_create_on(MOE_FLOAT32, 1, &shape1, NULL, "tpu:0", &a);
  CHECK(s == MOE_ERR_DEVICE && !a, "device tpu:0 gave %s (%s)", moe_status_name(s), moe_last_error());
  if (moe_cuda_device_count() == 0) {
    a = sentinel;
    s = moe_tensor_to_device(x, "cuda:0", &a);
    CHECK(s == MOE_ERR_CUDA_UNAVAILABLE && !a, "cuda:0 without CUDA gave %s (%s)", moe_status_name(s),
          moe_last_error());
  }

  moe_tensor all[] = {x,       dy,  y,   dx,  dx2,  logits, idx,  wts,  tpe,  rows, rpe,    p2r,
                      r2p,     pre, h,   eo,  yr,   scount, spre, sh,   sy,   ysum, d_rows, d_w,
                      dlogits, dxg, dwg, sdx, sdw1, sdw2,   edx,  edw1, edw2, dxr,  wrong};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) moe_tensor_free(all[i]);
  moe_tensor ws[] = {w.router_weight, w.w1, w.w2, w.shared_w1, w.shared_w2};
  for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) moe_tensor_free(ws[i]);
  moe_layer_grads_free(&g);
  moe_layer_grads_free(&g2);
  moe_layer_saved_free(saved);
  printf("%s: %d failure(s)\n", failures ? "FAIL" : "ok", failures);
  return failures ? 1 : 0;
}
