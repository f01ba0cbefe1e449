"""Runs calls through moe-ep's C ABI (cpp/include/moe_ep.h) with ctypes, standard library only.

    python3 capi_driver.py LIBRARY DEVICE < calls.json > results.json

calls.json is a list of {"fn": name, "args": {...}}; tensors in args are
{"dtype": "float32" | "bfloat16" | "int32" | ..., "shape": [...], "data": [...]},
created on DEVICE ("cpu", "cuda:0"). Each result is {"ok": true, "out": {...}}
with tensors read back as lists (floats as float32 values, ints as int32), or
{"ok": false, "status": "ERR_MOE_...", "message": "..."}. The float64
references that the results are compared with live in the jest test
(test/capi-ops.test.ts), not here.
"""
import ctypes as C
import json
import sys

DTYPES = {"float32": 0, "bfloat16": 1, "float16": 2, "int32": 3, "int64": 4}
ACTS = {"relu": 0, "gelu": 1, "silu": 2, "swiglu": 3, "geglu": 4}
SCORES = {"softmax": 0, "sigmoid": 1}
DROPS = {"probs": 0, "position": 1}

T = C.c_void_p  # moe_tensor
lib = C.CDLL(sys.argv[1])
DEVICE = sys.argv[2].encode()
lib.moe_last_error.restype = C.c_char_p
lib.moe_status_name.restype = C.c_char_p
lib.moe_tensor_free.argtypes = [T]


class RouteOptions(C.Structure):
    _fields_ = [("top_k", C.c_int), ("score_function", C.c_int), ("renormalize", C.c_int),
                ("expert_bias", T), ("num_groups", C.c_int), ("topk_groups", C.c_int)]


class RouteBackwardOptions(C.Structure):
    _fields_ = [("score_function", C.c_int), ("renormalize", C.c_int),
                ("aux_loss_grad", C.c_double), ("z_loss_grad", C.c_double)]


class PermuteOptions(C.Structure):
    _fields_ = [("num_experts", C.c_int64), ("capacity_factor", C.c_double),
                ("drop_policy", C.c_int), ("pad_to_capacity", C.c_int)]


class FillRandomOptions(C.Structure):
    _fields_ = [("seed", C.c_uint64), ("key", C.c_uint32), ("distribution", C.c_int), ("a", C.c_double),
                ("b", C.c_double), ("slice_size", C.c_int64), ("first_slice", C.c_int64)]


class AdamWOptions(C.Structure):
    _fields_ = [("lr", C.c_double), ("beta1", C.c_double), ("beta2", C.c_double), ("eps", C.c_double),
                ("weight_decay", C.c_double), ("step", C.c_int64)]


class LayerConfig(C.Structure):
    _fields_ = [("num_experts", C.c_int64), ("top_k", C.c_int), ("activation", C.c_int),
                ("score_function", C.c_int), ("renormalize", C.c_int), ("num_groups", C.c_int),
                ("topk_groups", C.c_int), ("capacity_factor", C.c_double), ("drop_policy", C.c_int),
                ("pad_to_capacity", C.c_int), ("aux_loss_coef", C.c_double), ("z_loss_coef", C.c_double)]


WEIGHT_NAMES = ["router_weight", "expert_bias", "w1", "b1", "w2", "b2", "shared_w1", "shared_b1", "shared_w2",
                "shared_b2"]
GRAD_NAMES = ["router_weight", "w1", "b1", "w2", "b2", "shared_w1", "shared_b1", "shared_w2", "shared_b2"]


class LayerWeights(C.Structure):
    _fields_ = [(n, T) for n in WEIGHT_NAMES]


class LayerGrads(C.Structure):
    _fields_ = [(n, T) for n in GRAD_NAMES]


class Failure(Exception):
    def __init__(self, status):
        super().__init__()
        self.status = lib.moe_status_name(status).decode()
        self.message = lib.moe_last_error().decode()


def ok(status):
    if status != 0:
        raise Failure(status)


class Scope:
    """Every tensor made during one call, freed at its end."""

    def __init__(self):
        self.handles = []

    def keep(self, h):
        if h:
            self.handles.append(h)
        return h

    def out(self):
        return self.keep(T()) or None

    def free(self):
        for h in self.handles:
            lib.moe_tensor_free(h)


def make(scope, spec, device=None):
    if spec is None:
        return None
    dtype = spec.get("dtype", "float32")
    shape = spec["shape"]
    data = spec.get("data")
    n = 1
    for s in shape:
        n *= s
    # Data crosses as float32 (floats) or int32/int64 (ints); the core converts to dtype.
    src_dtype = dtype if dtype in ("int32", "int64") else "float32"
    ctype = {"int32": C.c_int32, "int64": C.c_int64}.get(src_dtype, C.c_float)
    h = T()
    dims = (C.c_int64 * len(shape))(*shape)
    dev = (device or DEVICE)
    if data is None:
        ok(lib.moe_tensor_create_on(DTYPES[dtype], len(shape), dims, None, dev, C.byref(h)))
    else:
        assert len(data) == n, (spec["shape"], len(data))
        buf = (ctype * n)(*data)
        if src_dtype == dtype:
            ok(lib.moe_tensor_create_on(DTYPES[dtype], len(shape), dims, buf, dev, C.byref(h)))
        else:
            tmp = T()
            ok(lib.moe_tensor_create_on(DTYPES["float32"], len(shape), dims, buf, b"cpu", C.byref(tmp)))
            scope.keep(tmp)
            f32 = T()
            ok(lib.moe_tensor_to_device(tmp, dev, C.byref(f32)))
            scope.keep(f32)
            # Rounded to dtype on the device by an add with zeros of that dtype: a + 0 in a's dtype.
            zero = T()
            ok(lib.moe_tensor_create_on(DTYPES[dtype], len(shape), dims, None, dev, C.byref(zero)))
            scope.keep(zero)
            ok(lib.moe_add(zero, f32, C.byref(h)))
    return scope.keep(h)


def read(h):
    if not h:
        return None
    if isinstance(h, int):  # a c_void_p field of a Structure reads as a Python int
        h = T(h)
    dt = C.c_int()
    nd = C.c_int()
    shape = (C.c_int64 * 8)()
    ok(lib.moe_tensor_info(h, C.byref(dt), C.byref(nd), shape, 8))
    dims = [shape[i] for i in range(nd.value)]
    n = 1
    for s in dims:
        n *= s
    is_int = dt.value in (3, 4)
    buf = ((C.c_int32 if is_int else C.c_float) * max(n, 1))()
    ok(lib.moe_tensor_read(h, 3 if is_int else 0, buf, C.sizeof(buf)))
    dev = C.create_string_buffer(32)
    ok(lib.moe_tensor_device(h, dev, 32))
    name = [k for k, v in DTYPES.items() if v == dt.value][0]
    return {"dtype": name, "shape": dims, "device": dev.value.decode(), "data": list(buf[:n])}


def run(fn, a, s):
    t = lambda name: make(s, a.get(name))  # noqa: E731
    o = s.out
    if fn == "gate":
        y = T()
        ok(lib.moe_gate(t("x"), t("wg"), C.byref(y)))
        return {"logits": read(s.keep(y))}
    if fn == "gate_backward":
        dx, dwg = T(), T()
        ok(lib.moe_gate_backward(t("x"), t("wg"), t("dlogits"), C.byref(dx), C.byref(dwg)))
        return {"dx": read(s.keep(dx)), "dwg": read(s.keep(dwg))}
    if fn in ("route", "route_scores"):
        opts = RouteOptions(a["top_k"], SCORES[a.get("score", "softmax")], int(a.get("renormalize", False)),
                            t("expert_bias"), a.get("num_groups", 0), a.get("topk_groups", 0))
        if fn == "route_scores":
            sc = T()
            ok(lib.moe_route_scores(t("logits"), C.byref(opts), C.byref(sc)))
            return {"scores": read(s.keep(sc))}
        idx, w, cnt = T(), T(), T()
        aux, z = C.c_float(), C.c_float()
        ok(lib.moe_route(t("logits"), C.byref(opts), C.byref(idx), C.byref(w), C.byref(cnt), C.byref(aux),
                         C.byref(z)))
        return {"indices": read(s.keep(idx)), "weights": read(s.keep(w)), "tokens_per_expert": read(s.keep(cnt)),
                "aux": aux.value, "z": z.value}
    if fn == "route_backward":
        opts = RouteBackwardOptions(SCORES[a.get("score", "softmax")], int(a.get("renormalize", False)),
                                    a.get("aux_loss_grad", 0.0), a.get("z_loss_grad", 0.0))
        d = T()
        ok(lib.moe_route_backward(t("logits"), t("indices"), t("tokens_per_expert"), t("dweights"), C.byref(opts),
                                  C.byref(d)))
        return {"dlogits": read(s.keep(d))}
    if fn == "expert_capacity":
        c = C.c_int64()
        ok(lib.moe_expert_capacity(C.c_int64(a["tokens"]), C.c_int64(a["top_k"]), C.c_int64(a["num_experts"]),
                                   C.c_double(a["capacity_factor"]), C.byref(c)))
        return {"capacity": c.value}
    if fn == "permute":
        opts = PermuteOptions(a["num_experts"], a.get("capacity_factor", 0.0), DROPS[a.get("drop_policy", "probs")],
                              int(a.get("pad_to_capacity", False)))
        rows, rpe, p2r, r2p = T(), T(), T(), T()
        dropped, cap = C.c_int64(), C.c_int64()
        ok(lib.moe_permute(t("x"), t("indices"), t("weights"), C.byref(opts), C.byref(rows), C.byref(rpe),
                           C.byref(p2r), C.byref(r2p), C.byref(dropped), C.byref(cap)))
        return {"rows": read(s.keep(rows)), "rows_per_expert": read(s.keep(rpe)), "pair_to_row": read(s.keep(p2r)),
                "row_to_pair": read(s.keep(r2p)), "dropped": dropped.value, "capacity": cap.value}
    if fn == "permute_backward":
        d = T()
        ok(lib.moe_permute_backward(t("d_rows"), t("pair_to_row"), C.byref(d)))
        return {"dx": read(s.keep(d))}
    if fn == "unpermute":
        y = T()
        ok(lib.moe_unpermute(t("rows"), t("pair_to_row"), t("weights"), C.byref(y)))
        return {"y": read(s.keep(y))}
    if fn == "unpermute_backward":
        dr, dw = T(), T()
        ok(lib.moe_unpermute_backward(t("dy"), t("rows"), t("pair_to_row"), t("weights"), C.byref(dr), C.byref(dw)))
        return {"d_rows": read(s.keep(dr)), "d_weights": read(s.keep(dw))}
    if fn == "chunk_transpose":
        y = T()
        ok(lib.moe_chunk_transpose(t("x"), t("counts"), C.byref(y)))
        return {"y": read(s.keep(y))}
    if fn == "grouped_gemm":
        y = T()
        ok(lib.moe_grouped_gemm(t("x"), t("w"), t("counts"), t("bias"), C.byref(y)))
        return {"y": read(s.keep(y))}
    if fn == "grouped_gemm_backward":
        dx, dw, db = T(), T(), T()
        need = a.get("need", ["dx", "dw", "dbias"])
        ok(lib.moe_grouped_gemm_backward(t("dy"), t("x"), t("w"), t("counts"),
                                         C.byref(dx) if "dx" in need else None,
                                         C.byref(dw) if "dw" in need else None,
                                         C.byref(db) if "dbias" in need else None))
        return {"dx": read(s.keep(dx)), "dw": read(s.keep(dw)), "dbias": read(s.keep(db))}
    if fn == "activation":
        h = T()
        ok(lib.moe_activation_forward(t("x"), ACTS[a["kind"]], C.byref(h)))
        return {"h": read(s.keep(h))}
    if fn == "activation_backward":
        d = T()
        ok(lib.moe_activation_backward(t("dh"), t("x"), ACTS[a["kind"]], C.byref(d)))
        return {"dx": read(s.keep(d))}
    if fn == "add":
        y = T()
        ok(lib.moe_add(t("a"), t("b"), C.byref(y)))
        return {"y": read(s.keep(y))}
    if fn == "axpby":
        y = t("y")
        ok(lib.moe_axpby(y, t("x"), C.c_double(a["alpha"]), C.c_double(a["beta"])))
        return {"y": read(y)}
    if fn == "sum_squares":
        hs = [make(s, x) for x in a["tensors"]]
        arr = (T * max(len(hs), 1))(*hs)
        y = T()
        ok(lib.moe_sum_squares(arr, len(hs), C.byref(y)))
        return {"y": read(s.keep(y))}
    if fn == "fill_random":
        x = t("t")
        opts = FillRandomOptions(a["seed"], a["key"], 1 if a.get("distribution") == "uniform" else 0, a["a"], a["b"],
                                 a.get("slice_size", 0), a.get("first_slice", 0))
        ok(lib.moe_fill_random(x, C.byref(opts)))
        return {"t": read(x)}
    if fn == "jitter":
        y = T()
        ok(lib.moe_jitter(t("x"), C.c_double(a["eps"]), C.c_uint64(a["seed"]), C.c_uint32(a["key"]),
                          C.c_int64(a["slice"]), C.byref(y)))
        return {"y": read(s.keep(y))}
    if fn == "adamw":
        p, m, v = t("param"), t("exp_avg"), t("exp_avg_sq")
        opts = AdamWOptions(a["lr"], a["beta1"], a["beta2"], a["eps"], a["weight_decay"], a["step"])
        ok(lib.moe_adamw(p, t("grad"), m, v, C.byref(opts)))
        return {"param": read(p), "exp_avg": read(m), "exp_avg_sq": read(v)}
    if fn == "expert_bias_update":
        b = t("bias")
        ok(lib.moe_expert_bias_update(b, t("load"), C.c_double(a["rate"])))
        return {"bias": read(b)}
    if fn == "to_device":
        x = make(s, a["x"], b"cpu")
        y, back = T(), T()
        ok(lib.moe_tensor_to_device(x, DEVICE, C.byref(y)))
        s.keep(y)
        ok(lib.moe_tensor_clone(y, C.byref(back)))
        return {"y": read(y), "clone": read(s.keep(back))}
    if fn == "layer":
        c = a["config"]
        cfg = LayerConfig(c["num_experts"], c["top_k"], ACTS[c["activation"]], SCORES[c.get("score", "softmax")],
                          int(c.get("renormalize", False)), c.get("num_groups", 0), c.get("topk_groups", 0),
                          c.get("capacity_factor", 0.0), DROPS[c.get("drop_policy", "probs")],
                          int(c.get("pad_to_capacity", False)), c.get("aux_loss_coef", 0.0), c.get("z_loss_coef", 0.0))
        w = LayerWeights(*[make(s, a["weights"].get(n)) for n in WEIGHT_NAMES])
        y, saved, dx = T(), C.c_void_p(), T()
        aux, z = C.c_float(), C.c_float()
        ok(lib.moe_layer_forward(C.byref(cfg), C.byref(w), t("x"), C.byref(y), C.byref(aux), C.byref(z),
                                 C.byref(saved)))
        s.keep(y)
        g = LayerGrads()
        try:
            ok(lib.moe_layer_backward(C.byref(cfg), C.byref(w), saved, t("dy"), C.c_double(a.get("loss_scale", 1.0)),
                                      C.byref(dx), C.byref(g)))
            s.keep(dx)
            grads = {n: read(getattr(g, n)) for n in GRAD_NAMES}
        finally:
            lib.moe_layer_grads_free(C.byref(g))
            lib.moe_layer_saved_free(saved)
        return {"y": read(y), "aux": aux.value, "z": z.value, "dx": read(dx), "grads": grads}
    raise ValueError("unknown fn " + fn)


def main():
    calls = json.load(sys.stdin)
    results = []
    for call in calls:
        s = Scope()
        try:
            results.append({"ok": True, "out": run(call["fn"], call.get("args", {}), s)})
        except Failure as f:
            results.append({"ok": False, "status": f.status, "message": f.message})
        finally:
            s.free()
    json.dump(results, sys.stdout)


main()
