"""Speculative decoding by n-gram drafts, measured: the same greedy task prompts through an engine
without drafts and with `--speculative-ngram K` for each K, in one run on one machine.

    python -m bench.speculative                                  # CPU: the embedded SmolLM2, real weights
    python -m bench.speculative --model Qwen/Qwen3-8B --load-format dummy --tokenizer .tokenizer

Prompts are fresh (tasks.fresh_prompts, seeded) GraphDev and MMLU-Medicine prompts, the two tasks the
default policy decodes greedily, sent as the policy sends them (one user turn through the chat
template) with its max_tokens. Each mode runs in a fresh engine (so no mode finds another's prefix
blocks cached) after a warm-up on other prompts. Reported per mode: output tokens, seconds, tok/s
and its ratio to no drafts, drafts checked and kept, tokens a sequence gains per step, and whether
every output equals the one without drafts. Dummy weights make acceptance meaningless (a random
model's output is not language): use them only for the cost side.
"""

from __future__ import annotations

import argparse
import time

import torch

from models.sampler import SamplingParams
from scheduler.llm import LLM
from tasks.fresh_prompts import graph_prompts, mmlu_prompts
from tasks.policy import DEFAULT_POLICIES


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def task_requests(num_each: int, seed: int, max_tokens: int | None) -> list[tuple[str, SamplingParams]]:
    """(user message, params) for `num_each` GraphDev and `num_each` MMLU prompts, as the policy decodes them."""
    requests = []
    for task, prompts in (("graph", graph_prompts(num_each, seed)), ("mmlu_med", mmlu_prompts(num_each, seed))):
        policy = DEFAULT_POLICIES[task]
        params = SamplingParams(**policy.sampling, max_tokens=min(policy.max_tokens, max_tokens or policy.max_tokens))
        requests += [(p, params) for p in prompts]
    return requests


def run_mode(args, k: int, requests, warm_up) -> dict:
    llm = LLM(model=args.model, load_format=args.load_format, tokenizer=args.tokenizer, speculative_ngram=k,
              max_num_seqs=args.max_num_seqs)
    template = {"enable_thinking": False} if "qwen3" in llm.engine.model_config.model_type else {}
    llm.chat([[{"role": "user", "content": p}] for p, _ in warm_up], [params for _, params in warm_up], **template)
    stats0 = llm.engine.stats()
    _sync()
    start = time.perf_counter()
    outputs = llm.chat([[{"role": "user", "content": p}] for p, _ in requests], [params for _, params in requests],
                       **template)
    _sync()
    seconds = time.perf_counter() - start
    stats = llm.engine.stats()
    drafts = stats.draft_tokens - stats0.draft_tokens
    kept = stats.accepted_draft_tokens - stats0.accepted_draft_tokens
    tokens = [o.outputs[0].token_ids for o in outputs]
    return {"k": k, "tokens": tokens, "output_tokens": sum(map(len, tokens)), "seconds": seconds,
            "drafts": drafts, "kept": kept}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.speculative", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--k", default="2,4,8", help="comma list of draft lengths to compare with none")
    ap.add_argument("--num-each", type=int, default=16, help="GraphDev and MMLU prompts each")
    ap.add_argument("--max-tokens", type=int, default=None, help="cap below the policy's max_tokens")
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    requests = task_requests(args.num_each, args.seed, args.max_tokens)
    warm_up = task_requests(2, args.seed + 1, 8)
    rows = [run_mode(args, k, requests, warm_up) for k in [0] + [int(k) for k in args.k.split(",")]]
    base = rows[0]
    print(f"{args.model}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, "
          f"{len(requests)} prompts (GraphDev and MMLU, greedy)")
    print(f"{'drafts':>6} {'tokens':>7} {'seconds':>8} {'tok/s':>8} {'ratio':>6} {'kept/checked':>14} "
          f"{'same output':>11}")
    for r in rows:
        kept = f"{r['kept']}/{r['drafts']}" if r["k"] else "-"
        print(f"{r['k']:>6} {r['output_tokens']:>7} {r['seconds']:>8.2f} {r['output_tokens'] / r['seconds']:>8.1f} "
              f"{base['seconds'] / r['seconds'] * r['output_tokens'] / base['output_tokens']:>6.2f} {kept:>14} "
              f"{str(r['tokens'] == base['tokens']):>11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
