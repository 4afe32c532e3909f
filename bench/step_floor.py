#!/usr/bin/env python3
"""What the 784->512->10 AMP step could cost if each of its kernels ran at its ceiling.

Usage:
    python3 bench/step_floor.py [--batches 256,4096] [--json PATH]
    python3 bench/step_floor.py --self-test      # the byte and FLOP counts only, no torch

ampkit's step (docs/kernels/step.md) is a chain of dependent kernels. This script builds, with
PyTorch on the same card, the same chain out of ceiling operations of the same sizes, each
captured in a CUDA graph (one graph launch per 10 chains, so graph-launch cost amortises):
  - a memory-bound kernel becomes a device-to-device copy moving the same bytes (half read,
    half written), the fastest way to move those bytes that the card offers;
  - a GEMM becomes cuBLAS (torch.mm, f16 operands, f32 accumulation; the weight gradient with
    f32 output where this torch has out_dtype) of the same shape.
Rows: each ceiling operation alone (10 in a row in one graph: back-to-back, dependent through
the stream), the launch floor (tiny kernels of one element), and the whole chain. Data is
L2-resident as in the real step (the same buffers are replayed; the step touches ~30-60 MB of a
50 MB L2). Timing: CUDA events around 20 graph replays, median of 30 such brackets.
Inputs are random, never zeros.
"""

import argparse
import json
import statistics
import sys

INPUTS, HIDDEN, CLASSES = 784, 512, 10
PARAMS = INPUTS * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES


def step_kernels(batch):
    """The step's kernels at `batch` rows: (name, kind, bytes or GEMM shape, FLOPs).

    Bytes read + written by each kernel of ampkit's step (f16 = 2 B, f32 = 4 B, byte codes 1 B):
      augment   codes [B, 784] u8 -> x [B, 784] f16
      fwd1      x, W1 f16, h [B, 512] f16 out               GEMM M=B N=512 K=784
      head      h in, dz [B, 512] f16 out (logits, loss, dgrad, ReLU mask, bias gradients)
      wgrad2    h, dlogits [B, 16] f16 -> dW2 f32 (b4096 only: at <=256 rows the head does it)
      wgrad1    dz, x -> dW1 [512, 784] f32                   GEMM M=512 N=784 K=B
      unscale   every gradient read and written in place (f32)
      adam      master, m, v, grad read (16 B), master, m, v, f16 copy written (14 B) per parameter
    """
    grads = 4 * PARAMS
    rows = [
        ("augment", "mem", 3 * INPUTS * batch, 0),
        ("fwd1", "gemm", (batch, HIDDEN, INPUTS), 2.0 * batch * HIDDEN * INPUTS),
        ("head", "mem", 2 * 2 * HIDDEN * batch, 0),
    ]
    if batch > 256:
        rows.append(("wgrad2", "mem", 2 * HIDDEN * batch + 32 * batch + 4 * HIDDEN * CLASSES, 0))
    rows += [
        ("wgrad1", "gemm_wgrad", (HIDDEN, INPUTS, batch), 2.0 * batch * HIDDEN * INPUTS),
        ("unscale", "mem", 2 * grads, 0),
        ("adam", "mem", 30 * PARAMS, 0),
    ]
    return rows


def gemm_bytes(m, n, k, f32_out):
    return 2 * (m * k + n * k) + (4 if f32_out else 2) * m * n


def self_test():
    rows = step_kernels(4096)
    names = [r[0] for r in rows]
    assert names == ["augment", "fwd1", "head", "wgrad2", "wgrad1", "unscale", "adam"], names
    assert [r[0] for r in step_kernels(256)] == ["augment", "fwd1", "head", "wgrad1",
                                                  "unscale", "adam"]
    assert PARAMS == 407050
    assert rows[0][2] == 3 * 784 * 4096
    assert rows[1][3] == 2.0 * 4096 * 512 * 784
    assert rows[-1][2] == 30 * PARAMS
    print("self-test ok: byte and FLOP counts as documented")


class Timer:
    def __init__(self, torch):
        self.torch = torch

    def graph_us(self, body, per_graph, replays=20, brackets=30):
        """Median µs of one `body()` call: body captured `per_graph` times in one CUDA graph."""
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                body()  # warm-up outside the graph (cuBLAS workspaces, lazy init)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(per_graph):
                body()
        for _ in range(5):
            graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(brackets):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(replays):
                graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000.0 / replays / per_graph)
        return statistics.median(times)


def ceiling_op(torch, kind, size):
    """A closure running the ceiling operation for one step kernel, on random operands."""
    dev = "cuda"
    if kind == "mem":
        n = max(1, size // 8)
        src = torch.randn(n, device=dev)
        dst = torch.empty_like(src)
        return lambda: dst.copy_(src)
    m, n, k = size
    if kind == "gemm":  # Y[M,N] = X[M,K] . W[N,K]^T, f16 out
        x = torch.randn(m, k, device=dev, dtype=torch.float16)
        w = torch.randn(n, k, device=dev, dtype=torch.float16)
        y = torch.empty(m, n, device=dev, dtype=torch.float16)
        return lambda: torch.mm(x, w.t(), out=y)
    # weight gradient dW[M,N] = dY[K,M]^T . X[K,N], f32 out where torch.mm has out_dtype
    dy = torch.randn(k, m, device=dev, dtype=torch.float16)
    x = torch.randn(k, n, device=dev, dtype=torch.float16)
    try:
        torch.mm(dy.t(), x, out_dtype=torch.float32)
        return lambda: torch.mm(dy.t(), x, out_dtype=torch.float32)
    except TypeError:
        return lambda: torch.mm(dy.t(), x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="256,4096")
    parser.add_argument("--json")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        self_test()
        return 0
    import torch

    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    timer = Timer(torch)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batches": {}}

    one = torch.randn(1, device="cuda")
    floor = {n: timer.graph_us(lambda n=n: [one.add_(1.0) for _ in range(n)], 10) for n in (1, 7)}
    per_launch = (floor[7] - floor[1]) / 6
    print(f"launch floor: 1 tiny kernel {floor[1]:.2f} us, 7 in a row {floor[7]:.2f} us "
          f"({per_launch:.2f} us per dependent launch)")
    out["launch_floor_us"] = {"1": floor[1], "7": floor[7], "per_launch": per_launch}

    for batch in [int(b) for b in args.batches.split(",")]:
        print(f"\nbatch {batch}: kernel | ceiling op | MB moved | GFLOP | ceiling alone (us)")
        ops, rows = [], []
        for name, kind, size, flops in step_kernels(batch):
            op = ceiling_op(torch, kind, size)
            ops.append(op)
            us = timer.graph_us(op, 10)
            nbytes = size if kind == "mem" else gemm_bytes(*size, kind == "gemm_wgrad")
            what = "copy" if kind == "mem" else "cuBLAS"
            rows.append({"kernel": name, "ceiling": what, "bytes": nbytes, "flops": flops,
                         "us": us})
            print(f"  {name:8} | {what:6} | {nbytes / 1e6:6.2f} | {flops / 1e9:5.2f} | {us:6.2f}")
        chain = timer.graph_us(lambda: [op() for op in ops], 10)
        total = sum(r["us"] for r in rows)
        print(f"  chain of the {len(ops)} ceiling ops in one graph: {chain:.2f} us per step "
              f"(sum of the ops alone {total:.2f} us)")
        out["batches"][str(batch)] = {"kernels": rows, "chain_us": chain, "sum_us": total}

    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
