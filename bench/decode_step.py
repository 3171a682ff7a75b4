"""Decode-step efficiency on the GPU: bytes a decode step must read (weights + KV) per second of
step time, against the card's measured copy bandwidth.

    python -m bench.decode_step --model Qwen/Qwen3-0.6B --attention-backend triton --batch-sizes 1,64,256
    python -m bench.decode_step --model Qwen/Qwen3-8B --drafts 0,2,4,8   # what checking drafts costs

Every sequence has --context tokens already cached (random K/V: the cache content does not change
the work). A step is the engine's real one: build inputs, forward, logits, greedy sampling, and the
host copy of the sampled tokens. With --drafts D, each sequence also carries D draft tokens
(speculative decoding): the step computes 1 + D tokens a sequence, eagerly, and samples after each;
its time against D = 0 is what a step of drafts costs (tok/s then counts one token a sequence).
"""

from __future__ import annotations

import argparse

import torch


def copy_bandwidth(device, gib: float = 2.0) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    n = int(gib * 2**30) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * src.numel() * 2 * 10 / (start.elapsed_time(end) / 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="Qwen/Qwen3-0.6B")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    ap.add_argument("--batch-sizes", default="1,64,256")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--drafts", default="0", help="comma list of draft tokens per sequence")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one step per batch size")
    args = ap.parse_args()

    from models.rows import PlainRow
    from models.sampler import SamplingParams
    from scheduler.engine import EngineConfig, LLMEngine

    engine = LLMEngine(EngineConfig(model=args.model, load_format="dummy", attention_backend=args.attention_backend,
                                      block_size=args.block_size, kv_cache_dtype=args.kv_cache_dtype))
    runner, cfg, device = engine.runner, engine.model_config, engine.device
    for k, v in runner.kv_caches:  # random contents, written as the cache's dtype (normal_ has no fp8 kernel)
        k.copy_(torch.randn(k.shape, device=k.device))
        v.copy_(torch.randn(v.shape, device=v.device))
    weight_bytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    if cfg.tie_word_embeddings:  # the embedding is read once more, as the LM head
        weight_bytes += engine.model.embed_tokens.weight.numel() * engine.model.embed_tokens.weight.element_size()
    kv_token_bytes = cfg.kv_bytes_per_token(runner.kv_caches[0][0].element_size())
    bandwidth = copy_bandwidth(device)
    bs = engine.config.block_size
    rows = []
    for batch, drafts in [(int(b), int(d)) for b in args.batch_sizes.split(",") for d in args.drafts.split(",")]:
        blocks_per_seq = -(-(args.context + 1 + drafts) // bs)
        if batch * blocks_per_seq > engine.num_kv_blocks:
            print(f"batch {batch}: needs {batch * blocks_per_seq} blocks, pool has {engine.num_kv_blocks}; skipped")
            continue
        seqs = [PlainRow([7] * (args.context + 1 + drafts), list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)),
                         args.context, SamplingParams(temperature=0), num_output_tokens=1, num_draft_tokens=drafts)
                for i in range(batch)]
        ones = [1 + drafts] * batch
        for _ in range(3):
            runner.execute(seqs, ones).wait()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.iters):
            runner.execute(seqs, ones).wait()
        end.record()
        torch.cuda.synchronize()
        step = start.elapsed_time(end) / 1e3 / args.iters
        if args.profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    runner.execute(seqs, ones).wait()
            # Kernels first (those replayed inside the CUDA graph included): where the GPU's time goes;
            # then the host side: what the step thread does between replays.
            averages = prof.key_averages()
            print(f"--- batch {batch}, 3 steps: GPU kernels\n"
                  + averages.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=90))
            print(f"--- batch {batch}, 3 steps: host\n" + averages.table(sort_by="cpu_time_total", row_limit=12))
        moved = weight_bytes + batch * (args.context + 1) * kv_token_bytes
        rows.append((batch, drafts, step * 1e3, moved / 1e9, moved / step / 1e12, moved / step / bandwidth,
                     batch / step))
    print(f"\n{args.model} (dummy, {engine.model.embed_tokens.weight.dtype}, KV cache {runner.kv_dtype}), "
          f"backend {args.attention_backend}, "
          f"context {args.context}, {torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print(f"{'batch':>6} {'drafts':>6} {'step ms':>8} {'GB read':>8} {'TB/s':>6} {'of copy bw':>10} {'tok/s':>9}")
    for batch, drafts, ms, gb, tbs, frac, tps in rows:
        print(f"{batch:6d} {drafts:6d} {ms:8.2f} {gb:8.2f} {tbs:6.2f} {frac:10.1%} {tps:9.0f}")


if __name__ == "__main__":
    main()
