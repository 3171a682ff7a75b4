"""Offline throughput: Switchyard vs `transformers` on the same prompts, same machine, one run.

    python -m bench.offline_throughput            # CPU: SmolLM2-135M, 32 prompts of 16-512 tokens, 64 new each
    python -m bench.offline_throughput --model Qwen/Qwen3-0.6B --load-format dummy --workload nanovllm \\
        --attention-backend triton --hf-subset 64  # GPU: nano-vllm's workload on random Qwen3 weights

Workloads (prompts are random token ids, seeded; every request generates exactly its output length,
ignore_eos, greedy):
  mixed     --num-prompts prompts of --min-len..--max-len tokens, --max-new tokens each
  nanovllm  256 sequences, input and output lengths uniform in 100..1024 (nano-vllm's benchmark)
transformers runs them as left-padded batches of --hf-batch-size (`generate`), one at a time, or
through its continuous batching (`generate_batch`). HF cannot stop each row of a batch at its own
length, so for HF every generated token counts, including those past a row's length: this favours
HF. --hf-subset runs HF on the first N requests only (its throughput is per token, so comparable).
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def make_requests(args, vocab: int) -> list[tuple[list[int], int]]:
    """(prompt ids, output length) per request."""
    rng = random.Random(args.seed)
    if args.workload == "nanovllm":
        n, lo, hi = 256, 100, 1024
        return [([rng.randrange(100, vocab) for _ in range(rng.randint(lo, hi))], rng.randint(lo, hi))
                for _ in range(n)]
    return [([rng.randrange(100, vocab) for _ in range(rng.randint(args.min_len, args.max_len))], args.max_new)
            for _ in range(args.num_prompts)]


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_switchyard(llm, requests) -> tuple[float, int, list[list[int]]]:
    from models.sampler import SamplingParams
    prompts = [p for p, _ in requests]
    params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for _, m in requests]
    llm.generate(prompts[:4], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))  # warm-up
    _sync()
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    _sync()
    tokens = [o.outputs[0].token_ids for o in outs]
    return time.perf_counter() - start, sum(len(t) for t in tokens), tokens


def _padded(batch: list[list[int]], pad_id: int, device):
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
    return ids, mask, width


def run_hf_generate(hf, requests, batch_size: int, pad_id: int) -> tuple[float, int, list[list[int]]]:
    device = hf.device
    ids, mask, _ = _padded([requests[0][0][:16]], pad_id, device)
    hf.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=pad_id)  # warm-up
    _sync()
    start = time.perf_counter()
    outs, produced = [], 0
    with torch.no_grad():
        for i in range(0, len(requests), batch_size):
            chunk = requests[i:i + batch_size]
            longest = max(m for _, m in chunk)
            ids, mask, width = _padded([p for p, _ in chunk], pad_id, device)
            gen = hf.generate(ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                              do_sample=False, pad_token_id=pad_id)[:, width:]
            produced += gen.numel()
            outs += [row[:m] for row, (_, m) in zip(gen.tolist(), chunk)]
    _sync()
    return time.perf_counter() - start, produced, outs


def run_hf_generate_batch(hf, requests) -> tuple[float, int, list[list[int]]]:
    from transformers import GenerationConfig
    longest = max(m for _, m in requests)
    config = GenerationConfig(max_new_tokens=longest, do_sample=False, eos_token_id=-1)
    _sync()
    start = time.perf_counter()
    result = hf.generate_batch(inputs=[p for p, _ in requests], generation_config=config, progress_bar=False)
    _sync()
    elapsed = time.perf_counter() - start
    outs = [list(r.generated_tokens) for r in result.values()]
    return elapsed, sum(len(o) for o in outs), outs


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of output positions where two systems chose the same token, up to the first divergence."""
    same = total = 0
    for x, y in zip(a, b):
        prefix = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
        same += prefix
        total += len(x)
    return same / max(total, 1)


def build_hf(args, engine):
    """The transformers model with the very same weights as our engine."""
    import transformers
    from models.config import preset_config
    from models.loader import resolve_model_dir
    dtype = engine.model.embed_tokens.weight.dtype
    if args.load_format == "dummy":
        cfg = transformers.AutoConfig.for_model(**preset_config(args.model))
        with torch.device(engine.device):
            hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        ours = engine.model
        c = engine.model_config
        with torch.no_grad():
            hf.model.embed_tokens.weight.copy_(ours.embed_tokens.weight)
            hf.model.norm.weight.copy_(ours.norm.weight)
            if ours.lm_head is not None:
                hf.lm_head.weight.copy_(ours.lm_head.weight)
            for h, o in zip(hf.model.layers, ours.layers):
                q, k, v = o.self_attn.qkv_proj.weight.split([c.q_size, c.kv_size, c.kv_size])
                h.self_attn.q_proj.weight.copy_(q)
                h.self_attn.k_proj.weight.copy_(k)
                h.self_attn.v_proj.weight.copy_(v)
                h.self_attn.o_proj.weight.copy_(o.self_attn.o_proj.weight)
                if c.qk_norm:
                    h.self_attn.q_norm.weight.copy_(o.self_attn.q_norm.weight)
                    h.self_attn.k_norm.weight.copy_(o.self_attn.k_norm.weight)
                gate, up = o.mlp.gate_up_proj.weight.chunk(2)
                h.mlp.gate_proj.weight.copy_(gate)
                h.mlp.up_proj.weight.copy_(up)
                h.mlp.down_proj.weight.copy_(o.mlp.down_proj.weight)
                h.input_layernorm.weight.copy_(o.input_layernorm.weight)
                h.post_attention_layernorm.weight.copy_(o.post_attention_layernorm.weight)
        return hf.eval()
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(resolve_model_dir(args.model)), dtype=dtype).to(engine.device).eval()


def _report(name: str, result) -> None:
    seconds, produced, _ = result
    print(f"{name}: {produced} tokens in {seconds:.2f} s = {produced / seconds:.1f} tok/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--block-size", type=int, default=16, help="KV cache block (page) size in tokens")
    ap.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    ap.add_argument("--workload", default="mixed", choices=["mixed", "nanovllm"])
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-num-batched-tokens", type=int, default=4096)
    ap.add_argument("--hf", default="batch,single", help="comma list of: batch, single, generate_batch, none")
    ap.add_argument("--hf-batch-size", type=int, default=0, help="generate() batch size (0: all at once)")
    ap.add_argument("--hf-subset", type=int, default=0, help="run HF on the first N requests only")
    ap.add_argument("--compare-sync", action="store_true",
                    help="run Switchyard twice more, warm: synchronous steps, then overlapped ones")
    ap.add_argument("--profile", type=int, default=0, help="then profile one more run and print the top N functions")
    args = ap.parse_args()

    from scheduler.llm import LLM

    llm = LLM(args.model, load_format=args.load_format, attention_backend=args.attention_backend,
              max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size,
              kv_cache_dtype=args.kv_cache_dtype)
    engine = llm.engine
    requests = make_requests(args, engine.model_config.vocab_size)
    results = {"switchyard": run_switchyard(llm, requests)}
    ours = results["switchyard"][2]
    _report("switchyard", results["switchyard"])
    if args.compare_sync:  # the same engine again, warm, with and without overlapped steps
        for overlap in (False, True):
            engine.async_scheduling = overlap
            name = f"switchyard, {'async' if overlap else 'sync'} scheduling, 2nd run"
            results[name] = run_switchyard(llm, requests)
            _report(name, results[name])
    if args.profile:
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        profiler.runcall(run_switchyard, llm, requests)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    hf_requests = requests[:args.hf_subset] if args.hf_subset else requests
    modes = [m for m in args.hf.split(",") if m and m != "none"]
    if modes:
        hf = build_hf(args, engine)
        engine.runner.release()  # HF needs the memory our KV cache held
        pad_id = 0
        for mode in modes:
            if mode == "batch":
                results[f"hf generate, batches of {args.hf_batch_size or len(hf_requests)}"] = run_hf_generate(
                    hf, hf_requests, args.hf_batch_size or len(hf_requests), pad_id)
            elif mode == "single":
                results["hf generate, one at a time"] = run_hf_generate(hf, hf_requests, 1, pad_id)
            elif mode == "generate_batch":
                results["hf generate_batch"] = run_hf_generate_batch(hf, hf_requests)
            else:
                raise SystemExit(f"unknown --hf mode {mode!r}")
            _report(*list(results.items())[-1])

    device = torch.cuda.get_device_name() if engine.device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"\n{args.model} ({args.load_format}), workload {args.workload}, {len(requests)} requests "
          f"(HF on {len(hf_requests)}), backend {engine.runner.model.layers[0].self_attn.backend.name}, "
          f"block size {args.block_size}, KV cache {engine.runner.kv_dtype}, device {device}")
    base = results["switchyard"][1] / results["switchyard"][0]
    print(f"{'system':34} {'seconds':>8} {'tokens':>8} {'out tok/s':>10} {'switchyard x':>13} {'same tokens':>12}")
    for name, (seconds, produced, outs) in results.items():
        rate = produced / seconds
        print(f"{name:34} {seconds:8.2f} {produced:8d} {rate:10.1f} {base / rate:12.2f}x "
              f"{agreement(ours[:len(outs)], outs):11.1%}")


if __name__ == "__main__":
    main()
