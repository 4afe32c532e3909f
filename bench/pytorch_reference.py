#!/usr/bin/env python3
"""PyTorch reference numbers for the workloads of `ampkit bench`, on one CUDA GPU.

Usage:
    python3 bench/pytorch_reference.py [--quick] [--json PATH] [--only SUBSTRING] [--hot-l2]
    python3 bench/pytorch_reference.py --self-test [--json PATH]   # no torch, no GPU needed

Timing: CUDA events around every call; warm-up then the median of the timed calls (default 10
warm-ups + 50 timed runs, --quick 3 + 10). Kernel rows (ceilings, GEMM, memory-bound) first
queue a `torch.cuda._sleep` spin kernel so that the timed launches line up behind it and Python
launch overhead drops out: they measure GPU time. Training rows do not: a step's time includes
whatever CPU overhead the GPU has to wait for, which is what eager vs CUDA-graph shows.
Inputs are random (torch.randn / randint), never zeros. Memory-bound rows cycle through
ceil(200 MB / bytes per call) distinct input sets (at most one per call) so that reads come from
DRAM, not the 50 MB L2; --hot-l2 uses one set (L2-resident at MLP sizes). GEMMs reuse one set.

Rows (`kind`):
  ceiling  copy: d2d `dst.copy_(src)` of a 1 GiB f32 tensor; GB/s counts read + written bytes.
           gemm: cuBLAS (torch.mm) f16 8192^3, Y = X.W^T; TFLOP/s = 2*M*N*K / t.
  gemm     torch.mm on f16 operands with f32 accumulation (reduced-precision reduction off):
           fwd Y[M,N] = X[M,K].W[N,K]^T, dgrad dX[M,N] = dY[M,K].W[K,N], wgrad dW[M,N] =
           dY[K,M]^T.X[K,N] (f32 output via torch.mm(out_dtype=float32) where this torch has it,
           else f16 output; the name says which). FP8 rows (`fp8` in the table): torch._scaled_mm
           (cuBLASLt) on E4M3/E5M2 operands in the TN layout with per-tensor inverse scales, fast
           accumulation, bf16 output (f32 where the case says f32_out). `% ceiling`: of the
           measured cuBLAS 8192^3 TFLOP/s. `vs cuBLAS`: this row over cuBLAS at the same shape, 1.00x by construction
           (torch.mm is cuBLAS); the column lines this table up with ampkit's.
  mem      GB/s = bytes / t, `% ceiling` of the copy GB/s. `% copy same bytes`: of the GB/s of
           a d2d `dst.copy_(src)` moving the row's bytes (f32 tensors of bytes/8 elements: half
           read, half written), timed like the row (same rotation, queue-ahead, median) and
           measured once per size: small copies do not reach the 1 GiB copy's rate, so this is
           what a kernel of the row's size could reach if it were a copy; the copies measured
           are listed under the table. Bytes (f32 = 4 B, n = rows*cols):
           layernorm fwd 8n + 8cols (x, y, gamma, beta; mean/rstd not counted); layernorm bwd
           12n + 8cols (dy, x, dx, dgamma, dbeta; autograd.grad on a graph built once per set);
           softmax fwd 8n; softmax bwd 12n (torch._softmax_backward_data: dy, y, dx); xent fwd
           4n + 8rows + 4 (logits, int64 labels, mean loss); xent fwd+bwd adds 4n (dlogits);
           unscale 8 * elements (torch._amp_foreach_non_finite_check_and_unscale_ in place,
           inv_scale = 1 so the data stays random across repetitions).
  train    one AMP step of an MLP (Linear+ReLU, biases on): autocast f16 forward, cross_entropy,
           GradScaler("cuda"), Adam(lr=1e-3, fused=True). eager: zero_grad(set_to_none=True),
           forward, scaler.scale(loss).backward(), scaler.step(opt), scaler.update().
           graph: forward + scaled backward captured once in a CUDA graph (docs' whole-network
           recipe, autocast cache off); each step = replay + scaler.step + scaler.update.
           TFLOP/s = 6 * parameters * batch / t; `% ceiling` of the cuBLAS 8192^3 TFLOP/s.
A workload that raises gives an ERROR row (message in `rate`, whole in the JSON `error`) and
the run goes on; the exit status is then 1. --only keeps rows whose "kind name shape" contains
SUBSTRING (case-insensitive); the two ceilings always run.
"""

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

COLUMNS = ["kind", "name", "shape", "median_us", "rate", "unit", "% ceiling", "vs cuBLAS",
           "% copy same bytes"]
ROTATE_BYTES = 200e6  # > 50 MB L2 with margin
MAX_SETS = 2048
GIB = 1 << 30

CASES_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases.json")


def load_cases(path=CASES_JSON):
    """The workloads, from the table `ampkit bench` and the Rust benches read too (bench/cases.json),
    as this script's lists: GEMM (name, layout, M, N, K, f32 output, bf16 operands), LayerNorm and softmax (name,
    rows, cols), unscale (name, tensor lengths), training steps (name, widths, batch)."""
    with open(path) as f:
        t = json.load(f)
    return ([(g["name"], g["layout"], g["m"], g["n"], g["k"], g["f32_out"], g.get("bf16", False),
              g.get("fp8"))
             for g in t["gemm"]],
            [(c["name"], c["rows"], c["cols"]) for c in t["layernorm"]],
            [(c["name"], c["rows"], c["cols"]) for c in t["softmax"]],
            [(c["name"], c["tensors"]) for c in t["unscale"]],
            [(c["name"], c["layers"], c["batch"]) for c in t["train"]])


GEMM_CASES, LN_CASES, SM_CASES, UNSCALE_CASES, TRAIN_CASES = load_cases()


# ---------------------------------------------------------------- pure arithmetic (no torch)
def gemm_flops(m, n, k):
    return 2.0 * m * n * k


def gemm_shape(layout, m, n, k):
    return {"fwd": f"[{m}x{k}]@[{n}x{k}]^T", "dgrad": f"[{m}x{k}]@[{k}x{n}]",
            "wgrad": f"[{k}x{m}]^T@[{k}x{n}]"}[layout]


def mlp_params(dims):
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def train_flops(dims, batch):
    return 6.0 * mlp_params(dims) * batch


BYTES = {  # bytes read + written per call, f32 = 4 B, int64 labels = 8 B (see the docstring)
    "layernorm fwd": lambda r, c: 4 * (2 * r * c + 2 * c),
    "layernorm bwd": lambda r, c: 4 * (3 * r * c + 2 * c),
    "softmax fwd": lambda r, c: 8 * r * c,
    "softmax bwd": lambda r, c: 12 * r * c,
    "xent fwd": lambda r, c: 4 * r * c + 8 * r + 4,
    "xent fwd+bwd": lambda r, c: 8 * r * c + 8 * r + 4,
}


def copy_len(nbytes):
    """f32 elements of a copy whose bytes read + written (8 per element) match nbytes."""
    return max(1, int(nbytes / 8 + 0.5))


def n_sets(bytes_per_call, rotate=True):
    """Distinct input sets to cycle through so that one pass over them exceeds the L2."""
    return max(1, min(MAX_SETS, math.ceil(ROTATE_BYTES / bytes_per_call))) if rotate else 1


def make_row(kind, name, shape, median_us, rate, unit, ceiling=None, vs_cublas=None,
             copy_gbs=None):
    """copy_gbs: GB/s of a copy of the row's bytes, for `% copy same bytes` (mem rows)."""
    pct = 100.0 * rate / ceiling if ceiling and rate is not None else None
    pct_copy = 100.0 * rate / copy_gbs if copy_gbs and rate is not None else None
    return {"kind": kind, "name": name, "shape": shape, "median_us": median_us, "rate": rate,
            "unit": unit, "pct_ceiling": pct, "vs_cublas": vs_cublas,
            "pct_copy_same_bytes": pct_copy}


def error_row(kind, name, shape, exc):
    row = make_row(kind, name, shape, None, None, "")
    row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")[:200]
    return row


def selected(only, kind, name, shape):
    return not only or only.lower() in f"{kind} {name} {shape}".lower()


def row_cells(r):
    if r.get("error"):
        return [r["kind"], r["name"], r["shape"], "ERROR", r["error"][:60], "", "", "", ""]
    rate, pct, vs, pcp = r["rate"], r["pct_ceiling"], r["vs_cublas"], r["pct_copy_same_bytes"]
    return [r["kind"], r["name"], r["shape"], f"{r['median_us']:.1f}",
            "" if rate is None else f"{rate:.1f}" if rate >= 1 else f"{rate:.4f}", r["unit"],
            "" if pct is None else f"{pct:.1f}%", "" if vs is None else f"{vs:.2f}x",
            "" if pcp is None else f"{pcp:.1f}%"]


def markdown_table(rows):
    cells = [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in [COLUMNS] + cells) for i in range(len(COLUMNS))]
    right = (False, False, False, True, True, False, True, True, True)  # numeric columns
    head = "| " + " | ".join(h.ljust(w) for h, w in zip(COLUMNS, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 1) + (":" if r else "-") for w, r in zip(widths, right)) + "|"
    body = ["| " + " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(c, widths, right))
            + " |" for c in cells]
    return "\n".join([head, sep] + body)


def report_json(meta, ceilings, rows):
    def rnd(v, d):
        return None if v is None else round(v, d)
    out = []
    for r in rows:
        o = {k: r[k] for k in ("kind", "name", "shape", "unit")}
        o.update(median_us=rnd(r["median_us"], 3), rate=rnd(r["rate"], 4),
                 pct_ceiling=rnd(r["pct_ceiling"], 2), vs_cublas=rnd(r["vs_cublas"], 3),
                 pct_copy_same_bytes=rnd(r["pct_copy_same_bytes"], 2))
        out.append(dict(o, error=r["error"]) if r.get("error") else o)
    return dict({k: meta[k] for k in ("card", "driver", "torch", "date")}, rows=out,
                ceilings={"copy_gbs": rnd(ceilings.get("copy_gbs"), 2),
                          "cublas_f16_8192_tflops": rnd(ceilings.get("cublas_f16_8192_tflops"), 3)})


def copy_notes(copies, copy="device-to-device copy (dst.copy_(src))"):
    """The lines under the table: what `% copy same bytes` means, then every copy measured
    ({f32 elements: median us, or the error's text}), as ampkit prints them."""
    if not copies:
        return []
    sizes = [f"{8 * n / 1e6:.3f} MB failed ({us})" if isinstance(us, str) else
             f"{8 * n / 1e6:.3f} MB {us:.1f} us {8 * n / us / 1e3:.1f} GB/s"
             for n, us in sorted(copies.items())]
    return [f"% copy same bytes = 100 x rate / GB/s of a {copy} moving the row's bytes (half "
            "read, half written), timed like the row in the same run; % ceiling is against the "
            "1 GiB copy, whose rate a copy of a kernel's size need not reach",
            "same-bytes copies (bytes read + written, median, rate): " + "; ".join(sizes)]


def emit(meta, ceilings, rows, json_path, extra="", notes=()):
    print(f"card:   {meta['card']}\ndriver: {meta['driver']}\ntorch:  {meta['torch']}\n"
          f"date:   {meta['date']}{extra}\n")
    print(markdown_table(rows))
    if notes:
        print("\n" + "\n".join(notes))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report_json(meta, ceilings, rows), f, indent=2)
        print(f"\nwrote {json_path}")


# ---------------------------------------------------------------- GPU harness
class Bench:
    def __init__(self, torch, args):
        self.torch, self.args = torch, args
        self.warmup, self.runs = (3, 10) if args.quick else (10, 50)
        self.rotate = not args.hot_l2
        self.dev = torch.device("cuda")
        self.ceilings, self.rows = {}, []
        self.copies = {}  # same-bytes copies: f32 elements -> median us, or the error's text
        self.cycles_per_us = self._calibrate_sleep()

    def _calibrate_sleep(self):
        """Clock cycles per microsecond of torch.cuda._sleep, or None without it."""
        torch = self.torch
        try:
            torch.cuda._sleep(1000)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.cuda._sleep(20_000_000)
            e.record()
            e.synchronize()
            return 20_000_000 / (s.elapsed_time(e) * 1e3)
        except Exception as exc:  # private API; without it kernel rows include launch overhead
            print(f"note: torch.cuda._sleep unusable ({exc}); no queue-ahead", file=sys.stderr)
            return None

    def time_us(self, fn, sets=1, queue_ahead=True):
        """Median microseconds of fn(i % sets) over the timed runs, each between two CUDA events."""
        torch = self.torch
        t0 = time.perf_counter()
        for i in range(self.warmup):
            fn(i % sets)
        cpu_us = (time.perf_counter() - t0) / max(1, self.warmup) * 1e6
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.runs)]
        if queue_ahead and self.cycles_per_us:  # GPU busy while the CPU enqueues every run
            ahead_us = min(200_000.0, max(1_000.0, 2.0 * cpu_us * self.runs))
            torch.cuda._sleep(int(ahead_us * self.cycles_per_us))
        for i in range(self.runs):
            starts[i].record()
            fn((self.warmup + i) % sets)
            ends[i].record()
        torch.cuda.synchronize()
        return statistics.median([s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)])

    def guarded(self, kind, name, shape, body, force=False):
        """Append body()'s row, or an ERROR row if it raises; free the memory either way."""
        if not force and not selected(self.args.only, kind, name, shape):
            return
        try:
            row = body()
        except Exception as exc:  # one failure must not end the run
            row = error_row(kind, name, shape, exc)
        gc.collect()
        try:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
        except Exception:
            pass
        self.rows.append(row)
        print(" | ".join(c for c in row_cells(row) if c), file=sys.stderr, flush=True)

    def randn(self, *shape, dtype=None):
        return self.torch.randn(*shape, device=self.dev, dtype=dtype or self.torch.float32)

    def copy_same_bytes_gbs(self, nbytes):
        """GB/s of dst.copy_(src) moving nbytes (copy_len f32 elements, read + written), timed
        like a mem row (same rotation, queue-ahead, median); measured once per size, None if
        it failed."""
        n = copy_len(nbytes)
        if n not in self.copies:
            try:
                k = min(n_sets(8 * n, self.rotate), self.warmup + self.runs)
                srcs = [self.randn(n) for _ in range(k)]
                dst = self.torch.empty_like(srcs[0])
                self.copies[n] = self.time_us(lambda i: dst.copy_(srcs[i]), k)
            except Exception as exc:  # the row keeps its other columns
                self.copies[n] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200]
            srcs = dst = None
        us = self.copies[n]
        return None if isinstance(us, str) else 8 * n / (us * 1e-6) / 1e9

    def mem(self, name, label, nbytes, make, call):
        """A memory-bound row: make() builds one input set, call(set) runs the op on it; then
        a copy of the same bytes, timed the same way (`% copy same bytes`)."""
        def body():
            k = min(n_sets(nbytes, self.rotate), self.warmup + self.runs)  # each call a cold set
            sets = [make() for _ in range(k)]
            us = self.time_us(lambda i: call(sets[i]), k)
            sets.clear()  # free the inputs before the copy's
            return make_row("mem", name, label, us, nbytes / (us * 1e-6) / 1e9, "GB/s",
                            self.ceilings.get("copy_gbs"),
                            copy_gbs=self.copy_same_bytes_gbs(nbytes))
        self.guarded("mem", name, label, body)


# ---------------------------------------------------------------- workloads
def gemm_time(b, layout, m, n, k, f32_out, bf16=False):
    """(median us, TFLOP/s) of one torch.mm in the given layout (see GEMM_CASES), on f16 or bf16
    operands."""
    torch = b.torch
    h = torch.bfloat16 if bf16 else torch.float16
    if layout == "fwd":
        a, w = b.randn(m, k, dtype=h), b.randn(n, k, dtype=h).t()
    elif layout == "dgrad":
        a, w = b.randn(m, k, dtype=h), b.randn(k, n, dtype=h)
    else:
        a, w = b.randn(k, m, dtype=h).t(), b.randn(k, n, dtype=h)
    kw = {"out_dtype": torch.float32} if f32_out else {}
    us = b.time_us(lambda i: torch.mm(a, w, **kw))
    return us, gemm_flops(m, n, k) / (us * 1e-6) / 1e12


def fp8_time(b, m, n, k, fp8, f32_out):
    """(median us, TFLOP/s) of one torch._scaled_mm: A [m,k] and W [n,k] quantized to the case's
    FP8 formats ("e4m3" or "<A>x<B>"), scales 1/32, fast accumulation."""
    torch = b.torch
    kinds = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
    fa, fw = fp8.split("x") if "x" in fp8 else (fp8, fp8)
    a = (b.randn(m, k) * 32).to(kinds[fa])
    w = (b.randn(n, k) * 32).to(kinds[fw])
    s = torch.tensor(1.0 / 32, device="cuda")
    out = torch.float32 if f32_out else torch.bfloat16
    us = b.time_us(lambda i: torch._scaled_mm(a, w.t(), scale_a=s, scale_b=s, out_dtype=out,
                                              use_fast_accum=True))
    return us, gemm_flops(m, n, k) / (us * 1e-6) / 1e12


def run_ceilings(b):
    def copy():
        src = b.randn(GIB // 4)
        dst = b.torch.empty_like(src)
        us = b.time_us(lambda i: dst.copy_(src))
        gbs = b.ceilings["copy_gbs"] = 2 * GIB / (us * 1e-6) / 1e9
        return make_row("ceiling", "copy d2d", "1 GiB f32", us, gbs, "GB/s", gbs)

    def gemm():
        us, tflops = gemm_time(b, "fwd", 8192, 8192, 8192, False)
        b.ceilings["cublas_f16_8192_tflops"] = tflops
        return make_row("ceiling", "cuBLAS f16 gemm 8192^3", shape, us, tflops, "TFLOP/s", tflops)
    shape = gemm_shape("fwd", 8192, 8192, 8192)
    b.guarded("ceiling", "copy d2d", "1 GiB f32", copy, force=True)
    b.guarded("ceiling", "cuBLAS f16 gemm 8192^3", shape, gemm, force=True)


def run_gemms(b):
    torch = b.torch
    try:  # fp16 x fp16 -> fp32 output in torch.mm (PyTorch >= 2.8)
        a = b.randn(16, 16, dtype=torch.float16)
        f32_ok = torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except Exception:
        f32_ok = False
    for name, layout, m, n, k, f32_out, bf16, fp8 in GEMM_CASES:
        if fp8:
            if f32_out:
                name += " (f32 out)"
            shape = gemm_shape(layout, m, n, k)

            def body8(m=m, n=n, k=k, fp8=fp8, f32_out=f32_out):
                us, tflops = fp8_time(b, m, n, k, fp8, f32_out)
                return make_row("gemm", name, shape, us, tflops, "TFLOP/s",
                                b.ceilings.get("cublas_f16_8192_tflops"), vs_cublas=1.0)
            b.guarded("gemm", name, shape, body8)
            continue
        f32_out = f32_out and f32_ok
        if layout == "wgrad":
            name += " (f32 out)" if f32_out else (" (bf16 out)" if bf16 else " (f16 out)")
        shape = gemm_shape(layout, m, n, k)

        def body():
            us, tflops = gemm_time(b, layout, m, n, k, f32_out, bf16)
            return make_row("gemm", name, shape, us, tflops, "TFLOP/s",
                            b.ceilings.get("cublas_f16_8192_tflops"), vs_cublas=1.0)
        b.guarded("gemm", name, shape, body)


def run_layernorm(b):
    torch, F = b.torch, b.torch.nn.functional
    for label, r, c in LN_CASES:
        g, beta = b.randn(c).requires_grad_(), b.randn(c).requires_grad_()

        def graph():  # forward built once per set; the timed call is the backward only
            x = b.randn(r, c).requires_grad_()
            return F.layer_norm(x, (c,), g, beta, 1e-5), x, b.randn(r, c)
        with torch.no_grad():
            b.mem("layernorm fwd", label, BYTES["layernorm fwd"](r, c), lambda: b.randn(r, c),
                  lambda x: F.layer_norm(x, (c,), g, beta, 1e-5))
        b.mem("layernorm bwd", label, BYTES["layernorm bwd"](r, c), graph,
              lambda s: torch.autograd.grad(s[0], (s[1], g, beta), s[2], retain_graph=True))


def run_softmax_xent(b):
    torch, F = b.torch, b.torch.nn.functional
    for label, r, c in SM_CASES:
        def nbytes(op):
            return BYTES[op](r, c)

        def logits_labels(grad=False):
            return b.randn(r, c).requires_grad_(grad), torch.randint(0, c, (r,), device=b.dev)
        b.mem("softmax fwd", label, nbytes("softmax fwd"), lambda: b.randn(r, c),
              lambda x: torch.softmax(x, -1))
        b.mem("softmax bwd", label, nbytes("softmax bwd"),
              lambda: (b.randn(r, c), torch.softmax(b.randn(r, c), -1)),
              lambda s: torch._softmax_backward_data(s[0], s[1], -1, torch.float32))
        b.mem("xent fwd", label, nbytes("xent fwd"), logits_labels, lambda s: F.cross_entropy(*s))
        b.mem("xent fwd+bwd", label, nbytes("xent fwd+bwd"), lambda: logits_labels(True),
              lambda s: torch.autograd.grad(F.cross_entropy(*s), s[0]))


def run_unscale(b):
    torch = b.torch
    found, inv = torch.zeros(1, device=b.dev), torch.ones(1, device=b.dev)
    for label, sizes in UNSCALE_CASES:
        b.mem("unscale+inf check", label, 8 * sum(sizes), lambda: [b.randn(n) for n in sizes],
              lambda s: torch._amp_foreach_non_finite_check_and_unscale_(s, found, inv))


def train_step_fn(b, dims, batch, mode):
    """A callable running one AMP training step of a fresh MLP, eager or CUDA-graph replay."""
    torch, nn, F = b.torch, b.torch.nn, b.torch.nn.functional
    layers = []
    for i, (a, c) in enumerate(zip(dims[:-1], dims[1:])):
        layers += ([nn.ReLU()] if i else []) + [nn.Linear(a, c)]
    model = nn.Sequential(*layers).to(b.dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    x, t = b.randn(batch, dims[0]), torch.randint(0, dims[-1], (batch,), device=b.dev)

    def eager(_i=0, cache=True):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, cache_enabled=cache):
            loss = F.cross_entropy(model(x), t)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    if mode == "eager":
        return eager
    side = torch.cuda.Stream()  # warm up off the default stream: optimizer state, scale tensor
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            eager(cache=False)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)  # the grads get allocated from the graph's pool
    with torch.cuda.graph(graph):
        with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
            static_loss = F.cross_entropy(model(x), t)
        scaler.scale(static_loss).backward()

    def replay(_i=0):
        graph.replay()
        scaler.step(opt)
        scaler.update()
    # The graph reads x and t at their captured addresses: they must outlive this function
    # (freed, their memory is reused and the replay reads garbage labels).
    replay.keep_alive = (graph, static_loss, x, t, model, opt, scaler)
    return replay


def run_training(b):
    for label, dims, batch in TRAIN_CASES:
        for mode in ("eager", "graph"):
            name, shape = f"{label} {mode}", "-".join(map(str, dims)) + f" x{batch}"

            def body():
                us = b.time_us(train_step_fn(b, dims, batch, mode), queue_ahead=False)
                tflops = train_flops(dims, batch) / (us * 1e-6) / 1e12
                return make_row("train", name, shape, us, tflops, "TFLOP/s",
                                b.ceilings.get("cublas_f16_8192_tflops"))
            b.guarded("train", name, shape, body)


# ---------------------------------------------------------------- entry points
def driver_version(torch):
    """nvidia-smi's driver version, else the CUDA driver API version torch reports."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except Exception:
        pass
    for getter in (getattr(torch.cuda, "driver_version", None),
                   getattr(torch._C, "_cuda_getDriverVersion", None)):
        try:
            return f"CUDA driver API {getter()}"
        except Exception:
            pass
    return "unknown"


def run_gpu(args):
    try:
        import torch
    except ImportError as exc:
        sys.exit(f"error: cannot import torch ({exc}); --help and --self-test work without it")
    if not torch.cuda.is_available():
        sys.exit("error: torch.cuda.is_available() is False")
    try:
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    except Exception as exc:
        print(f"warning: fp16 reduced-precision reduction left as is: {exc}", file=sys.stderr)
    b = Bench(torch, args)
    meta = {"card": torch.cuda.get_device_name(), "driver": driver_version(torch),
            "torch": f"{torch.__version__} (CUDA {torch.version.cuda})",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    setup = (f"{b.warmup} warm-ups + {b.runs} timed runs, median; L2 rotation "
             f"{'on' if b.rotate else 'off'}; queue-ahead {'on' if b.cycles_per_us else 'off'}")
    print(f"{meta['card']}: {setup}", file=sys.stderr)
    run_ceilings(b)
    for family in (run_gemms, run_layernorm, run_softmax_xent, run_unscale, run_training):
        try:
            family(b)
        except Exception as exc:  # a failure outside any row's guard: report it and go on
            b.rows.append(error_row("error", family.__name__, "", exc))
    emit(meta, b.ceilings, b.rows, args.json, f"\nruns:   {setup}", copy_notes(b.copies))
    return 1 if any(r.get("error") for r in b.rows) else 0


def self_test(args):
    """Formatting and arithmetic with fake numbers; needs neither torch nor a GPU."""
    assert "torch" not in sys.modules, "self-test must not import torch"
    assert GEMM_CASES[0][:6] == ("8192^3", "fwd", 8192, 8192, 8192, False), GEMM_CASES[0]
    assert any(g[7] == "e4m3" and g[2:5] == (8192, 8192, 8192) for g in GEMM_CASES)
    assert all(layout in ("fwd", "dgrad", "wgrad") for _, layout, *_ in GEMM_CASES)
    assert ("MLP 4096x512", 4096, 512) in LN_CASES and ("MNIST 4096x10", 4096, 10) in SM_CASES
    assert UNSCALE_CASES[1] == ("MLP 784-512-10 grads", [784 * 512, 512, 512 * 10, 10])
    assert TRAIN_CASES[0] == ("mlp 784-512-10 b256", [784, 512, 10], 256), TRAIN_CASES[0]
    assert gemm_flops(8192, 8192, 8192) == 2 * 8192 ** 3
    assert mlp_params([784, 512, 10]) == 407050 and mlp_params([4096] * 5) == 4 * (4096 ** 2 + 4096)
    assert BYTES["layernorm fwd"](16384, 1024) == 8 * 16384 * 1024 + 8 * 1024 >= 64 << 20
    assert BYTES["xent fwd+bwd"](4096, 10) == 8 * 40960 + 8 * 4096 + 4
    assert n_sets(128 << 20) == 2 and n_sets(8 * 4096 * 10) == 611 and n_sets(1) == MAX_SETS
    assert n_sets(8 * 4096 * 10, rotate=False) == 1
    assert selected(None, "gemm", "8192^3", "") and selected("GEMM", "gemm", "8192^3", "")
    assert not selected("softmax", "gemm", "8192^3", "") and selected("384x", "mem", "", "16384x1")
    assert gemm_shape("wgrad", 512, 784, 4096) == "[4096x512]^T@[4096x784]"
    mlp = [784, 512, 10]
    rows = [make_row("ceiling", "copy d2d", "1 GiB f32", 715.8, 3000.0, "GB/s", 3000.0),
            make_row("gemm", "mlp fwd 4096x512x784", gemm_shape("fwd", 4096, 512, 784), 21.3,
                     gemm_flops(4096, 512, 784) / 21.3e-6 / 1e12, "TFLOP/s", 700.0, vs_cublas=1.0),
            make_row("mem", "softmax fwd", "16384x1024", 50.0,
                     BYTES["softmax fwd"](16384, 1024) / 50e-6 / 1e9, "GB/s", 3000.0,
                     copy_gbs=2800.0),
            make_row("train", "mlp 784-512-10 b256 eager", "784-512-10 x256", 35000.0,
                     train_flops(mlp, 256) / 35000e-6 / 1e12, "TFLOP/s", 700.0),
            error_row("train", "wide 4x4096 b8192 graph", "4096-4096-4096-4096-4096 x8192",
                      RuntimeError("capture failed | cudaErrorStreamCaptureInvalidated\nmore"))]
    assert abs(rows[2]["pct_ceiling"] - 100 * 2684.35456 / 3000) < 1e-6
    assert abs(rows[2]["pct_copy_same_bytes"] - 100 * 2684.35456 / 2800) < 1e-6
    assert rows[0]["pct_copy_same_bytes"] is None and rows[4]["pct_copy_same_bytes"] is None
    assert copy_len(8 * 4096 * 512) == 4096 * 512 and copy_len(12) == 2 and copy_len(0) == 1
    lines = markdown_table(rows).splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == COLUMNS, lines[0]
    assert all(line.count("|") == len(COLUMNS) + 1 for line in lines)
    empty_last = "|" + " " * (len(COLUMNS[-1]) + 2) + "|"
    assert " 1.00x |" in lines[3] and lines[3].endswith(empty_last), lines[3]
    assert lines[4].endswith(" 95.9% |") and lines[5].endswith(empty_last), lines[4]
    notes = copy_notes({2097152: 7.0, 500: "OutOfMemoryError: CUDA out of memory"})
    assert notes[0].startswith("% copy same bytes = 100 x rate / GB/s of a device-to-device copy")
    assert notes[1].endswith("0.004 MB failed (OutOfMemoryError: CUDA out of memory); "
                             "16.777 MB 7.0 us 2396.7 GB/s"), notes[1]
    assert copy_notes({}) == []
    meta = {"card": "FAKE GPU", "driver": "0.0", "torch": "none", "date": "1970-01-01T00:00:00Z"}
    path = args.json or os.path.join(tempfile.mkdtemp(), "self_test.json")
    emit(meta, {"copy_gbs": 3000.0, "cublas_f16_8192_tflops": 700.0}, rows, path, notes=notes)
    with open(path) as f:
        doc = json.load(f)
    keys = {"kind", "name", "shape", "median_us", "rate", "unit", "pct_ceiling", "vs_cublas",
            "pct_copy_same_bytes"}
    assert set(doc) == {"card", "driver", "torch", "date", "ceilings", "rows"}
    assert set(doc["ceilings"]) == {"copy_gbs", "cublas_f16_8192_tflops"}
    assert all(keys <= set(r) for r in doc["rows"]) and doc["rows"][4]["median_us"] is None
    assert "error" in doc["rows"][4] and doc["rows"][1]["vs_cublas"] == 1.0
    assert doc["rows"][2]["pct_copy_same_bytes"] == 95.87
    print("\nself-test OK")
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch reference numbers for ampkit's benchmark "
                                "workloads on one CUDA GPU (details: the module docstring).")
    p.add_argument("--quick", action="store_true",
                   help="3 warm-ups + 10 timed runs (default 10 + 50)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--only", metavar="SUBSTRING", help="run only rows whose 'kind name shape' "
                   "contains SUBSTRING (case-insensitive); the two ceilings always run")
    p.add_argument("--hot-l2", action="store_true", help="no input rotation: memory-bound rows "
                   "reuse one input set (L2-resident at MLP sizes)")
    p.add_argument("--self-test", action="store_true",
                   help="check formatting and arithmetic with fake numbers; needs no torch or GPU")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return self_test(args) if args.self_test else run_gpu(args)


if __name__ == "__main__":
    sys.exit(main())
