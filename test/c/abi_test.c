/*
 * Embeds moe-ep through its C ABI alone: routes tokens and runs a grouped GEMM,
 * and checks both against results computed here in double precision, then
 * checks that bad input comes back as a status with a message. Exit code 0
 * means every check passed; each failure is printed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_ep.h"

#include "check.h"

enum { T = 37, E = 8, K = 2, D = 24, N = 40 };

static double lcg(unsigned* s) {
  *s = *s * 1664525u + 1013904223u;
  return ((*s >> 8) & 0xffff) / 65536.0 - 0.5;
}

int main(void) {
  unsigned seed = 12345;
  float logits[T * E];
  for (int i = 0; i < T * E; i++) logits[i] = (float)(4.0 * lcg(&seed));
  CHECK(moe_abi_version() == MOE_EP_ABI_VERSION, "abi version %d", moe_abi_version());

  /* ---- route: softmax, top-2, no renormalisation ---- */
  int64_t lshape[2] = {T, E};
  moe_tensor tl = NULL, tidx = NULL, tw = NULL, tcount = NULL;
  OK(moe_tensor_create(MOE_FLOAT32, 2, lshape, logits, &tl));
  moe_route_options ro = {K, MOE_SCORE_SOFTMAX, 0, NULL, 0, 0};
  float aux = -1, z = -1;
  OK(moe_route(tl, &ro, &tidx, &tw, &tcount, &aux, &z));
  int idx[T * K], counts[E];
  float w[T * K];
  OK(moe_tensor_read(tidx, MOE_INT32, idx, sizeof idx));
  OK(moe_tensor_read(tw, MOE_FLOAT32, w, sizeof w));
  OK(moe_tensor_read(tcount, MOE_INT32, counts, sizeof counts));

  int ref_counts[E] = {0};
  double psum[E] = {0}, zsum = 0;
  for (int t = 0; t < T; t++) {
    double m = -1e300, s = 0, p[E];
    for (int e = 0; e < E; e++) m = fmax(m, logits[t * E + e]);
    for (int e = 0; e < E; e++) s += exp(logits[t * E + e] - m);
    for (int e = 0; e < E; e++) p[e] = exp(logits[t * E + e] - m) / s, psum[e] += p[e];
    zsum += pow(m + log(s), 2);
    int used[E] = {0};
    for (int j = 0; j < K; j++) {
      int best = -1;
      for (int e = 0; e < E; e++)
        if (!used[e] && (best < 0 || p[e] > p[best])) best = e;
      used[best] = 1;
      ref_counts[best]++;
      CHECK(idx[t * K + j] == best, "token %d choice %d: expert %d, expected %d", t, j, idx[t * K + j], best);
      CHECK(fabs(w[t * K + j] - p[best]) < 1e-6, "token %d choice %d: weight %g, expected %g", t, j, w[t * K + j],
            p[best]);
    }
  }
  double ref_aux = 0;
  for (int e = 0; e < E; e++) {
    CHECK(counts[e] == ref_counts[e], "expert %d: %d tokens, expected %d", e, counts[e], ref_counts[e]);
    ref_aux += E * (ref_counts[e] / (double)(T * K)) * (psum[e] / T);
  }
  CHECK(fabs(aux - ref_aux) < 1e-5 * fabs(ref_aux), "aux loss %g, expected %g", aux, ref_aux);
  CHECK(fabs(z - zsum / T) < 1e-5 * (zsum / T), "z loss %g, expected %g", z, zsum / T);

  /* ---- grouped GEMM: 3 experts, one with no rows ---- */
  enum { L = 3, R = 11 };
  int rows[L] = {7, 0, 4};
  float x[R * D], wt[L * D * N], y[R * N];
  for (int i = 0; i < R * D; i++) x[i] = (float)lcg(&seed);
  for (int i = 0; i < L * D * N; i++) wt[i] = (float)lcg(&seed);
  int64_t xs[2] = {R, D}, ws[3] = {L, D, N}, cs[1] = {L};
  moe_tensor tx = NULL, twt = NULL, tc = NULL, ty = NULL;
  OK(moe_tensor_create(MOE_FLOAT32, 2, xs, x, &tx));
  OK(moe_tensor_create(MOE_FLOAT32, 3, ws, wt, &twt));
  OK(moe_tensor_create(MOE_INT32, 1, cs, rows, &tc));
  OK(moe_grouped_gemm(tx, twt, tc, NULL, &ty));
  moe_dtype ydt;
  int ynd;
  int64_t yshape[4];
  OK(moe_tensor_info(ty, &ydt, &ynd, yshape, 4));
  CHECK(ydt == MOE_FLOAT32 && ynd == 2 && yshape[0] == R && yshape[1] == N, "y is %d-D [%lld, %lld]", ynd,
        (long long)yshape[0], (long long)yshape[1]);
  OK(moe_tensor_read(ty, MOE_FLOAT32, y, sizeof y));
  double maxerr = 0, maxref = 1e-6;
  for (int e = 0, r0 = 0; e < L; r0 += rows[e], e++)
    for (int r = r0; r < r0 + rows[e]; r++)
      for (int n = 0; n < N; n++) {
        double acc = 0;
        for (int d = 0; d < D; d++) acc += (double)x[r * D + d] * wt[(e * D + d) * N + n];
        maxerr = fmax(maxerr, fabs(acc - y[r * N + n]));
        maxref = fmax(maxref, fabs(acc));
      }
  CHECK(maxerr / maxref < 1e-5, "grouped GEMM relative error %g", maxerr / maxref);

  /* ---- errors come back as statuses with messages, never as crashes ---- */
  moe_route_options bad = {E + 1, MOE_SCORE_SOFTMAX, 0, NULL, 0, 0};
  moe_tensor none = NULL;
  moe_status s = moe_route(tl, &bad, &none, NULL, NULL, NULL, NULL);
  CHECK(s == MOE_ERR_VALUE || s == MOE_ERR_SHAPE, "k > E gave %s", moe_status_name(s));
  CHECK(strstr(moe_last_error(), "9") != NULL, "k > E message names the value: %s", moe_last_error());
  CHECK(none == NULL, "no tensor on failure");
  int neg[L] = {7, -1, 5};
  moe_tensor tneg = NULL;
  OK(moe_tensor_create(MOE_INT32, 1, cs, neg, &tneg));
  s = moe_grouped_gemm(tx, twt, tneg, NULL, &none);
  CHECK(s == MOE_ERR_VALUE, "negative count gave %s (%s)", moe_status_name(s), moe_last_error());
  s = moe_grouped_gemm(tl, twt, tc, NULL, &none);
  CHECK(s == MOE_ERR_SHAPE, "wrong x shape gave %s (%s)", moe_status_name(s), moe_last_error());
  s = moe_gate(NULL, tl, &none);
  CHECK(s == MOE_ERR_VALUE, "NULL tensor gave %s", moe_status_name(s));
  logits[5] = NAN;
  moe_tensor tnan = NULL;
  OK(moe_tensor_create(MOE_FLOAT32, 2, lshape, logits, &tnan));
  s = moe_route(tnan, &ro, &none, NULL, NULL, NULL, NULL);
  CHECK(s == MOE_ERR_NONFINITE, "NaN logits gave %s", moe_status_name(s));
  CHECK(strcmp(moe_status_name(MOE_ERR_SHAPE), "ERR_MOE_SHAPE") == 0, "status name %s", moe_status_name(MOE_ERR_SHAPE));

  /* ---- sizes past the limits are refused, naming them: no wrapped counts, no crash ---- */
  {
    const int64_t two62 = (int64_t)1 << 62, two31 = (int64_t)1 << 31, two32 = (int64_t)1 << 32;
    int64_t wraps[3] = {two62, 4, 0}; /* 2^64 elements: 0 in 64 bits */
    int64_t cube[3] = {two31, two31, 4};
    int64_t hidden[3] = {two32, 0, two32}; /* a zero dimension does not hide the others */
    int64_t negative[2] = {-1, -4};
    int64_t past_bytes[2] = {(int64_t)1 << 26, (int64_t)1 << 26}; /* 2^52 elements, 2^54 bytes */
    struct {
      int ndim;
      const int64_t* shape;
      const void* data;
      const char* says;
    } refused[] = {
        {2, wraps, NULL, "2^53-1"},  {2, wraps, logits, "2^53-1"},        {3, cube, NULL, "2^53-1"},
        {3, hidden, NULL, "2^53-1"}, {2, negative, NULL, "non-negative"}, {2, past_bytes, NULL, "bytes"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
      moe_tensor t = NULL;
      s = moe_tensor_create(MOE_FLOAT32, refused[i].ndim, refused[i].shape, refused[i].data, &t);
      CHECK(s == MOE_ERR_SHAPE, "shape %zu gave %s (%s)", i, moe_status_name(s), moe_last_error());
      CHECK(strstr(moe_last_error(), refused[i].says) != NULL, "shape %zu: message names the limit: %s", i,
            moe_last_error());
      CHECK(t == NULL, "shape %zu: no tensor on failure", i);
    }
    /* Zero-element tensors with large dimensions are legal; a GEMM whose output multiplies them past the limit
       is refused. */
    int64_t xs0[2] = {(int64_t)1 << 30, 0}, ws0[3] = {1, 0, (int64_t)1 << 30}, c1[1] = {1};
    int rows0[1] = {1 << 30};
    moe_tensor x0 = NULL, w0 = NULL, c0 = NULL, y0 = NULL;
    OK(moe_tensor_create(MOE_FLOAT32, 2, xs0, NULL, &x0));
    OK(moe_tensor_create(MOE_FLOAT32, 3, ws0, NULL, &w0));
    OK(moe_tensor_create(MOE_INT32, 1, c1, rows0, &c0));
    s = moe_grouped_gemm(x0, w0, c0, NULL, &y0);
    CHECK(s == MOE_ERR_VALUE && strstr(moe_last_error(), "2^53-1") != NULL, "[2^30, 0] x [1, 0, 2^30] gave %s (%s)",
          moe_status_name(s), moe_last_error());
    CHECK(y0 == NULL, "no GEMM output on failure");
    moe_route_options odd = {1, (moe_score_function)7, 0, NULL, 0, 0};
    s = moe_route(tl, &odd, NULL, NULL, NULL, NULL, NULL);
    CHECK(s == MOE_ERR_VALUE && strstr(moe_last_error(), "7") != NULL, "score function 7 gave %s (%s)",
          moe_status_name(s), moe_last_error());
    moe_tensor_free(x0);
    moe_tensor_free(w0);
    moe_tensor_free(c0);
  }

  moe_tensor all[] = {tl, tidx, tw, tcount, tx, twt, tc, ty, tneg, tnan};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) moe_tensor_free(all[i]);
  printf("%s: %d failure(s)\n", failures ? "FAIL" : "ok", failures);
  return failures ? 1 : 0;
}
