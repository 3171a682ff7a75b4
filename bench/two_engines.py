"""Two engines in one process: run a large and a small model one after the other, then at the same
time (each on its own worker thread and CUDA stream), and compare combined throughput.

    python -m bench.two_engines --large Qwen/Qwen3-1.7B --small Qwen/Qwen3-0.6B --num-prompts 128
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--large", default="Qwen/Qwen3-1.7B")
    ap.add_argument("--small", default="Qwen/Qwen3-0.6B")
    ap.add_argument("--large-device", default="cuda:0")
    ap.add_argument("--small-device", default="cuda:0")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--num-prompts", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()

    from models.sampler import SamplingParams
    from scheduler.async_engine import AsyncEngine
    from scheduler.engine import EngineConfig, LLMEngine

    def engine(model, device, utilization):
        return AsyncEngine(LLMEngine(EngineConfig(model=model, load_format="dummy", device=device,
                                                  attention_backend=args.attention_backend,
                                                  gpu_memory_utilization=utilization, max_model_len=4096)))

    shared = args.large_device == args.small_device
    small = engine(args.small, args.small_device, 0.4 if shared else 0.9)
    large = engine(args.large, args.large_device, 0.85)
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 150000) for _ in range(rng.randint(100, 1000))] for _ in range(args.num_prompts)]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)

    async def run(eng):
        outs = await asyncio.gather(*(eng.complete(p, params) for p in prompts))
        return sum(len(o.outputs[0].token_ids) for o in outs)

    async def timed(coro):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = await coro
        torch.cuda.synchronize()
        return result, time.perf_counter() - start

    async def bench():
        await run(small)  # warm-up: compile and fill caches on both
        await run(large)
        (tok_l, t_l) = await timed(run(large))
        (tok_s, t_s) = await timed(run(small))
        (both, t_both) = await timed(asyncio.gather(run(large), run(small)))
        await large.shutdown()
        await small.shutdown()
        return tok_l, t_l, tok_s, t_s, sum(both), t_both

    tok_l, t_l, tok_s, t_s, tok_both, t_both = asyncio.run(bench())
    sequential = (tok_l + tok_s) / (t_l + t_s)
    concurrent = tok_both / t_both
    print(f"\n{args.large} on {args.large_device} + {args.small} on {args.small_device}, {args.num_prompts} prompts "
          f"x {args.max_tokens} tokens each, {torch.cuda.get_device_name()}")
    print(f"large alone {tok_l / t_l:9.1f} tok/s ({t_l:.2f} s); small alone {tok_s / t_s:9.1f} tok/s ({t_s:.2f} s)")
    print(f"one after the other {sequential:9.1f} tok/s ({t_l + t_s:.2f} s)")
    print(f"at the same time    {concurrent:9.1f} tok/s ({t_both:.2f} s): {concurrent / sequential:.2f}x")


if __name__ == "__main__":
    main()
