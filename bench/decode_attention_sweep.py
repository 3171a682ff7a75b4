"""Time the Triton paged-decode kernel alone over launch configurations and KV-cache layouts (GPU).

    python -m bench.decode_attention_sweep                      # Qwen3-0.6B attention shapes
    python -m bench.decode_attention_sweep --batch-sizes 256 --context 1024 --quick

Decode attention is a stream over the KV cache, so the figure of merit is the KV bytes read per
second against the copy bandwidth measured in the same run. Two physical layouts are compared
through the kernel's strides: "token-major" [blocks, block_size, kv_heads, head_dim] (a block's
rows of one head are 256-byte pieces, kv_heads * head_dim apart) and "head-major"
[blocks, kv_heads, block_size, head_dim] (one head's rows of a block are contiguous).
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch

from bench.decode_step import copy_bandwidth
from models.attention import triton_kernels
from models.attention.triton_kernels import paged_decode_attention


def time_call(fn, iters: int = 20) -> float:
    """Seconds per call, from CUDA events around `iters` calls after a warm-up."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def make_case(batch: int, context: int, block_size: int, kv_heads: int, group: int, head_dim: int,
              layout: str, dtype, device):
    """Random q, a shuffled paged cache holding `context` tokens per sequence, and its block tables."""
    blocks_per_seq = -(-context // block_size)
    num_blocks = batch * blocks_per_seq
    shape = ((num_blocks, kv_heads, block_size, head_dim) if layout == "head-major"
             else (num_blocks, block_size, kv_heads, head_dim))
    k = torch.randn(shape, dtype=dtype, device=device)
    v = torch.randn(shape, dtype=dtype, device=device)
    if layout == "head-major":  # the kernels index [block, slot, head, dim] through strides
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    tables = torch.randperm(num_blocks, device=device, dtype=torch.int32).view(batch, blocks_per_seq)
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    q = torch.randn(batch, kv_heads * group, head_dim, dtype=dtype, device=device)
    return q, k, v, tables, seq_lens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-sizes", default="1,64,256")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--group", type=int, default=2, help="query heads per KV head")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="fewer configurations")
    args = ap.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    bandwidth = copy_bandwidth(device)
    block_ns = (64, 128) if args.quick else (32, 64, 128)
    warps = (4, 8) if args.quick else (2, 4, 8)
    stages = (2, 3) if args.quick else (1, 2, 3, 4)
    default = dict(triton_kernels.DECODE_CONFIG)
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for layout in ("token-major", "head-major"):
            q, k, v, tables, lens = make_case(batch, args.context, args.block_size, args.kv_heads, args.group,
                                              args.head_dim, layout, dtype, device)
            out = torch.empty_like(q)
            kv_bytes = 2 * batch * args.context * args.kv_heads * args.head_dim * k.element_size()
            ref = None
            for block_n, num_warps, num_stages in itertools.product(block_ns, warps, stages):
                triton_kernels.DECODE_CONFIG.update(BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)
                try:
                    seconds = time_call(functools.partial(paged_decode_attention, q, k, v, tables, lens, 0.088, out,
                                                          max_seq_len=args.context))
                except Exception as e:  # e.g. out of shared memory for this tile shape
                    print(f"batch {batch} {layout} {block_n}/{num_warps}/{num_stages}: {type(e).__name__}")
                    continue
                ref = out.clone() if ref is None else ref
                err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
                rows.append((batch, layout, block_n, num_warps, num_stages, seconds * 1e6,
                             kv_bytes / seconds / bandwidth, err))
            triton_kernels.DECODE_CONFIG.update(default)
    print(f"\n{torch.cuda.get_device_name()}, bf16, context {args.context}, block size {args.block_size}, "
          f"{args.kv_heads} KV heads x group {args.group}, head_dim {args.head_dim}; "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; default {default}")
    print(f"{'batch':>5} {'layout':>11} {'BLOCK_N':>7} {'warps':>5} {'stages':>6} {'us':>9} {'of copy bw':>10} "
          f"{'rel diff':>8}")
    for batch in sorted({r[0] for r in rows}):
        best = sorted((r for r in rows if r[0] == batch), key=lambda r: r[5])
        chosen = [r for r in best if r[1] == "token-major" and (r[2], r[3], r[4]) == tuple(default.values())]
        for r in best[:6] + chosen:
            print(f"{r[0]:5d} {r[1]:>11} {r[2]:7d} {r[3]:5d} {r[4]:6d} {r[5]:9.1f} {r[6]:10.1%} {r[7]:8.1e}"
                  + ("   <- current default" if r in chosen else ""))


if __name__ == "__main__":
    main()
