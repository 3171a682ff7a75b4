"""Offline throughput: Switchyard vs `transformers` generate() on the same prompts, same machine, one run.

    python -m bench.offline_throughput                      # SmolLM2-135M on CPU: 32 prompts, 64 new tokens
    python -m bench.offline_throughput --num-prompts 8 --max-new 16 --skip-hf-single   # a quick look

Prompts are random token ids with lengths uniform in [--min-len, --max-len] (seeded), every request
generates exactly --max-new tokens (ignore_eos), greedy. transformers runs them as one left-padded
batch and one prompt at a time. Each system gets one warm-up call first; figures are output
tokens per second of wall time.
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def make_prompts(n: int, min_len: int, max_len: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    # Skip the lowest ids, where tokenizers keep their special tokens.
    return [[rng.randrange(100, vocab) for _ in range(rng.randint(min_len, max_len))] for _ in range(n)]


def run_switchyard(llm, prompts, max_new) -> tuple[float, list[list[int]]]:
    from models.sampler import SamplingParams
    params = SamplingParams(temperature=0, max_tokens=max_new, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    return time.perf_counter() - start, [o.outputs[0].token_ids for o in outs]


def _hf_generate(hf, batch: list[list[int]], max_new: int, pad_id: int) -> list[list[int]]:
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                      do_sample=False, pad_token_id=pad_id)
    return out[:, width:].tolist()


def run_hf(hf, prompts, max_new, pad_id, one_at_a_time: bool) -> tuple[float, list[list[int]]]:
    _hf_generate(hf, prompts[:2], 4, pad_id)
    start = time.perf_counter()
    with torch.no_grad():
        if one_at_a_time:
            outs = [_hf_generate(hf, [p], max_new, pad_id)[0] for p in prompts]
        else:
            outs = _hf_generate(hf, prompts, max_new, pad_id)
    return time.perf_counter() - start, outs


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of output positions where two systems chose the same token, up to the first divergence."""
    same = total = 0
    for x, y in zip(a, b):
        prefix = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), len(x))
        same += prefix
        total += len(x)
    return same / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-hf-single", action="store_true")
    args = ap.parse_args()

    import transformers
    from models.loader import resolve_model_dir
    from scheduler.llm import LLM

    llm = LLM(args.model)
    vocab = llm.engine.model_config.vocab_size
    prompts = make_prompts(args.num_prompts, args.min_len, args.max_len, vocab, args.seed)
    new_tokens = args.num_prompts * args.max_new
    results = {}
    ours_time, ours = run_switchyard(llm, prompts, args.max_new)
    results["switchyard"] = (ours_time, ours)
    del llm
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(resolve_model_dir(args.model)),
                                                           dtype=torch.float32).eval()
    pad_id = hf.generation_config.pad_token_id or 0
    results["hf generate, one padded batch"] = run_hf(hf, prompts, args.max_new, pad_id, one_at_a_time=False)
    if not args.skip_hf_single:
        results["hf generate, one prompt at a time"] = run_hf(hf, prompts, args.max_new, pad_id, one_at_a_time=True)

    print(f"\n{args.num_prompts} prompts, lengths {args.min_len}-{args.max_len} (seed {args.seed}), "
          f"{args.max_new} new tokens each, {torch.get_num_threads()} threads, device cpu")
    print(f"{'system':36} {'seconds':>8} {'out tok/s':>10} {'switchyard speed-up':>20} {'same tokens':>12}")
    for name, (seconds, outs) in results.items():
        print(f"{name:36} {seconds:8.2f} {new_tokens / seconds:10.1f} {seconds / ours_time:19.2f}x "
              f"{agreement(ours, outs):11.1%}")


if __name__ == "__main__":
    main()
