"""FlashAttention-4 against the Triton kernels, phase by phase, on the engine's paged cache (GPU, sm90+).

    python -m bench.attention_backends                 # Qwen3-0.6B and -8B attention shapes, block sizes 16/64/128
    python -m bench.attention_backends --quick         # fewer cases

Each case builds a random paged cache (blocks shuffled, every row finite), then times one phase
implementation of each backend on the same tensors, back to back:
  decode   one query per sequence over `context` cached tokens; timed as the engine runs it, inside a
           CUDA graph (10 calls per replay), host lengths pinned to the context. Reported against the
           copy bandwidth measured in the same run (decode attention streams the KV cache once).
  prefill  `num_seqs` chunks of `query` new tokens after `cached` tokens already in the cache; timed
           eagerly (the engine runs prefill steps eagerly), so launch cost counts. Reported in TFLOP/s
           of causal attention work.
The outputs of both backends are compared (relative error) so a fast wrong kernel shows.
"""

from __future__ import annotations

import argparse
import functools
import json

import torch

from bench.decode_attention_sweep import time_call
from bench.decode_step import copy_bandwidth
from models.attention.flash_backend import flash_decode, flash_prefill, flash_unavailable_reason
from models.attention.metadata import AttentionMetadata
from models.attention.triton_backend import triton_decode, triton_prefill

SHAPES = {"Qwen3-0.6B": (16, 8), "Qwen3-8B": (32, 8)}  # query heads, KV heads; head_dim 128
DECODES = [(1, 1024), (1, 8192), (16, 1024), (64, 1024), (64, 4096), (256, 1024), (256, 2048)]  # (batch, context)
PREFILLS = [(1, 2048, 0), (4, 512, 0), (16, 128, 0), (2, 1024, 3072), (8, 512, 512)]  # (seqs, query, cached)
QUICK_DECODES = [(1, 1024), (64, 1024), (256, 1024)]
QUICK_PREFILLS = [(1, 2048, 0), (4, 512, 0), (2, 1024, 3072)]


def make_batch(num_seqs: int, query: int, context: int, block_size: int, hq: int, hkv: int, device,
               dtype=torch.bfloat16):
    """q for `query` new tokens per sequence whose context (cached + new) is `context` tokens."""
    blocks_per_seq = -(-context // block_size)
    num_blocks = num_seqs * blocks_per_seq + 1
    k_cache = torch.randn(num_blocks, block_size, hkv, 128, dtype=dtype, device=device)
    v_cache = torch.randn_like(k_cache)
    tables = (torch.randperm(num_blocks - 1, device=device, dtype=torch.int32) + 1)[:num_seqs * blocks_per_seq]
    starts = [i * query for i in range(num_seqs + 1)]
    lens = [context] * num_seqs
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(num_seqs * query, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        block_tables=tables.view(num_seqs, blocks_per_seq), num_decodes=num_seqs if query == 1 else 0,
        max_query_len=query, max_seq_len=context, query_start_loc_cpu=starts, seq_lens_cpu=lens)
    q = torch.randn(num_seqs * query, hq, 128, dtype=dtype, device=device)
    return q, k_cache, v_cache, meta


def time_in_graph(fn, calls: int = 10, replays: int = 20) -> float:
    """Seconds per call with the calls captured in one CUDA graph: device time without launch cost."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return time_call(graph.replay, replays) / calls


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--block-sizes", default="16,64,128")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    if (reason := flash_unavailable_reason()) is not None:
        raise SystemExit(reason)
    device = torch.device("cuda")
    bandwidth = copy_bandwidth(device)
    rows = []
    for model, (hq, hkv) in SHAPES.items():
        for block_size in [int(b) for b in args.block_sizes.split(",")]:
            for batch, context in QUICK_DECODES if args.quick else DECODES:
                q, kc, vc, meta = make_batch(batch, 1, context, block_size, hq, hkv, device)
                outs, times = {}, {}
                for name, fn in (("triton", triton_decode), ("flash", flash_decode)):
                    out = torch.empty_like(q)
                    times[name] = time_in_graph(functools.partial(fn, q, kc, vc, meta, 0.088, out))
                    outs[name] = out
                kv_bytes = 2 * batch * context * hkv * 128 * 2
                rows.append(dict(model=model, phase="decode", block_size=block_size, case=f"{batch}x{context}",
                                 triton_us=times["triton"] * 1e6, flash_us=times["flash"] * 1e6,
                                 triton_bw=kv_bytes / times["triton"] / bandwidth,
                                 flash_bw=kv_bytes / times["flash"] / bandwidth,
                                 rel_err=rel_err(outs["flash"], outs["triton"])))
            for num_seqs, query, cached in QUICK_PREFILLS if args.quick else PREFILLS:
                q, kc, vc, meta = make_batch(num_seqs, query, cached + query, block_size, hq, hkv, device)
                outs, times = {}, {}
                for name, fn in (("triton", triton_prefill), ("flash", flash_prefill)):
                    out = torch.empty_like(q)
                    times[name] = time_call(functools.partial(fn, q, kc, vc, meta, 0.088, out))
                    outs[name] = out
                # causal work: each query attends to the cached tokens and to its predecessors
                pairs = num_seqs * (query * cached + query * (query + 1) / 2)
                flops = 4 * pairs * hq * 128
                rows.append(dict(model=model, phase="prefill", block_size=block_size,
                                 case=f"{num_seqs}x{query}+{cached}", triton_us=times["triton"] * 1e6,
                                 flash_us=times["flash"] * 1e6, triton_tflops=flops / times["triton"] / 1e12,
                                 flash_tflops=flops / times["flash"] / 1e12,
                                 rel_err=rel_err(outs["flash"], outs["triton"])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), copy_bandwidth=bandwidth, rows=rows), f, indent=1)
    print(f"\n{torch.cuda.get_device_name()}, bf16, head_dim 128, copy bandwidth {bandwidth / 1e12:.2f} TB/s; "
          "decode in CUDA graphs (bw = KV bytes / time / copy bw), prefill eager (TFLOP/s of causal attention)")
    print(f"{'model':>10} {'phase':>7} {'block':>5} {'case':>13} {'triton us':>9} {'flash us':>9} {'flash/triton':>12} "
          f"{'triton':>7} {'flash':>7} {'rel err':>8}")
    for r in rows:
        unit = "bw" if r["phase"] == "decode" else "tflops"
        fmt = (lambda x: f"{x:7.1%}") if unit == "bw" else (lambda x: f"{x:7.1f}")
        print(f"{r['model']:>10} {r['phase']:>7} {r['block_size']:5d} {r['case']:>13} {r['triton_us']:9.1f} "
              f"{r['flash_us']:9.1f} {r['flash_us'] / r['triton_us']:12.2f} {fmt(r['triton_' + unit])} "
              f"{fmt(r['flash_' + unit])} {r['rel_err']:8.1e}")


if __name__ == "__main__":
    main()
