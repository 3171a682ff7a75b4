"""Quantization, measured: per mode, weight memory, KV blocks, decode-step time and offline throughput;
and quality against the unquantized model (greedy agreement, logit error).

    python -m bench.quantization --tokenizer .tokenizer --json quant.json        # GPU: Qwen3-8B dummy weights
    python -m bench.quantization --modes none,fp8 --quick                        # a shorter run
    python -m bench.quantization --quality --device cpu                          # quality on the embedded model

Speed (the default): every mode of --modes runs in a subprocess of its own, so each starts on an
empty GPU and one that fails (or runs past --mode-timeout) costs only its own figures. A mode reports
  weight GiB     the decoder's weights as stored (models.quantization.weight_bytes)
  KV blocks      what --gpu-memory-utilization leaves for the cache after the weights
  step ms @B     one decode step (the engine's runner: inputs, forward, logits, greedy sampling, host copy)
                 of B sequences with --context cached tokens each (random K/V)
  tok/s          nano-vllm's offline workload: --num-seqs sequences (256; --quick 64), input and
                 output lengths uniform in 100..1024, greedy, ignore_eos, through LLM.generate
Quality (--quality): the same prompts through the unquantized and each quantized model: the share of
greedy tokens equal to the unquantized model's up to the first difference, how many prompts agree
on every token, and the logit error of the next token after each prompt (max and relative RMS).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

import torch

MODES = ("none", "bnb-8bit", "bnb-4bit", "fp8")
QUALITY_PROMPTS = ["What is the capital of France?", "Name three primary colors.",
                   "How many milligrams are in a gram?", "Why is the sky blue? Explain in one sentence.",
                   "Translate 'good morning' into Spanish.", "What is 12 times 12?",
                   "List the planets of the solar system in order.", "Write a haiku about autumn."]
RAW_PROMPTS = ["The quick brown fox", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
               "Once upon a time, in a kingdom by the sea, there lived a", "The mitochondria is"]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.inference_mode()
def next_token_logits(engine, prompt_ids: list[int]) -> torch.Tensor:
    """float32 logits [vocab] of the token after `prompt_ids`: one prefill written into the first
    blocks of the engine's KV pool, so the engine must be idle."""
    from models.rows import PlainRow
    runner = engine.runner
    blocks = -(-len(prompt_ids) // engine.config.block_size)
    assert blocks <= engine.num_kv_blocks and not engine.has_unfinished_requests()
    row = PlainRow(list(prompt_ids), list(range(blocks)))
    input_ids, positions, meta, rows = runner.prepare([row], [len(prompt_ids)])
    hidden = engine.model(input_ids, positions, runner.kv_caches, meta)
    return engine.model.compute_logits(hidden.index_select(0, rows))[0]


def prefix_agreement(ours: list[list[int]], reference: list[list[int]]) -> float:
    """Share of the reference's tokens matched before each output's first difference."""
    same = sum(next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y)))
               for x, y in zip(ours, reference))
    return same / max(sum(len(y) for y in reference), 1)


def quality(args) -> list[dict]:
    """Greedy agreement and logit error of each mode against the unquantized model (its KV cache in
    the model's dtype); with --kv-cache-dtype fp8 every other run keeps its KV cache in fp8, and the
    unquantized model with an fp8 cache is one more run."""
    from models.quantization import weight_bytes
    from models.sampler import SamplingParams
    from scheduler.llm import LLM
    rows, reference = [], None
    runs = [("none", "auto")] + [(m, args.kv_cache_dtype) for m in args.modes if m != "none"]
    if args.kv_cache_dtype != "auto":
        runs.append(("none", args.kv_cache_dtype))
    for mode, kv in runs:
        start = time.perf_counter()
        try:
            llm = LLM(args.quality_model, quantization=mode, device=args.device, dtype=args.dtype,
                      kv_cache_gib=0.25, kv_cache_dtype=kv)
        except ValueError as e:  # this mode cannot run on this device: say so and go on
            rows.append({"mode": mode, "kv_cache_dtype": kv, "error": str(e)})
            continue
        tok = llm.tokenizer
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True) for q in QUALITY_PROMPTS] + RAW_PROMPTS
        ids = [tok(p).input_ids for p in prompts]
        outs = llm.generate(ids, SamplingParams(temperature=0, max_tokens=args.quality_tokens, ignore_eos=True))
        tokens = [o.outputs[0].token_ids for o in outs]
        logits = torch.stack([next_token_logits(llm.engine, p) for p in ids]).cpu()
        if reference is None:
            reference = (tokens, logits)
        ref_tokens, ref_logits = reference
        err = logits - ref_logits
        rows.append({"mode": mode, "kv_cache_dtype": kv, "weight_gib": weight_bytes(llm.engine.model) / 2**30,
                     "greedy_prefix_agreement": prefix_agreement(tokens, ref_tokens),
                     "prompts_identical": sum(a == b for a, b in zip(tokens, ref_tokens)),
                     "first_token_agreement": sum(a[0] == b[0] for a, b in zip(tokens, ref_tokens)) / len(ids),
                     "max_logit_error": err.abs().max().item(),
                     "relative_rms_logit_error": (err.norm() / ref_logits.norm()).item(),
                     "prompts": len(ids), "tokens_per_prompt": args.quality_tokens,
                     "seconds": time.perf_counter() - start})
        del llm
    return rows


@torch.inference_mode()
def decode_step_ms(engine, batch: int, context: int, iters: int) -> float | None:
    """Milliseconds of one decode step of `batch` sequences with `context` cached tokens each, or
    None when the pool cannot hold them."""
    from models.rows import PlainRow
    from models.sampler import SamplingParams
    runner, bs = engine.runner, engine.config.block_size
    per_seq = -(-(context + 1) // bs)
    if batch * per_seq > engine.num_kv_blocks:
        return None
    rows = [PlainRow([7] * (context + 1), list(range(i * per_seq, (i + 1) * per_seq)), context,
                     SamplingParams(temperature=0), num_output_tokens=1) for i in range(batch)]
    ones = [1] * batch
    for _ in range(3):
        runner.execute(rows, ones).wait()
    _sync()
    start = time.perf_counter()
    for _ in range(iters):
        runner.execute(rows, ones).wait()
    _sync()
    return (time.perf_counter() - start) / iters * 1e3


def nanovllm_requests(num_seqs: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    """nano-vllm's benchmark: input and output lengths uniform in 100..1024, random token ids."""
    rng = random.Random(seed)
    return [([rng.randrange(100, vocab) for _ in range(rng.randint(100, 1024))], rng.randint(100, 1024))
            for _ in range(num_seqs)]


def _report(**figures) -> None:
    # One line per figure group, read by the parent: what came before a timeout is kept.
    print("RESULT " + json.dumps(figures), flush=True)


def speed_one_mode(args, mode: str) -> None:
    """Measure one mode in this process, reporting figures as they are taken."""
    from models.quantization import weight_bytes
    from models.sampler import SamplingParams
    from scheduler.llm import LLM
    start = time.perf_counter()
    llm = LLM(args.model, load_format="dummy", tokenizer=args.tokenizer, quantization=mode,
              attention_backend=args.attention_backend, gpu_memory_utilization=args.gpu_memory_utilization)
    engine = llm.engine
    _report(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            weight_gib=weight_bytes(engine.model) / 2**30, kv_blocks=engine.num_kv_blocks,
            start_s=time.perf_counter() - start)
    for k, v in engine.runner.kv_caches:
        k.normal_()
        v.normal_()
    for batch in args.batch_sizes:
        _report(**{f"step_ms_b{batch}": decode_step_ms(engine, batch, args.context, args.iters)})
    requests = nanovllm_requests(args.num_seqs, engine.model_config.vocab_size)
    llm.generate([p for p, _ in requests[:4]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    _sync()
    start = time.perf_counter()
    outs = llm.generate([p for p, _ in requests],
                        [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True) for _, m in requests])
    _sync()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    _report(throughput_tok_s=tokens / (time.perf_counter() - start), throughput_seqs=len(requests))


def speed(args) -> list[dict]:
    """Every mode in its own subprocess; their figures, in mode order."""
    rows = []
    for mode in args.modes:
        argv = [sys.executable, "-m", "bench.quantization", "--one-mode", mode, "--model", args.model,
                "--attention-backend", args.attention_backend, "--context", str(args.context),
                "--iters", str(args.iters), "--num-seqs", str(args.num_seqs),
                "--batch-sizes", ",".join(map(str, args.batch_sizes)),
                "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
        if args.tokenizer:
            argv += ["--tokenizer", args.tokenizer]
        row, start = {"mode": mode}, time.perf_counter()
        print(f"--- {mode}", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.mode_timeout)
            stdout, failed = proc.stdout, proc.returncode != 0
            if failed:
                row["error"] = f"exit {proc.returncode}: " + proc.stderr.strip()[-600:]
        except subprocess.TimeoutExpired as e:
            stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            row["error"] = f"timed out after {args.mode_timeout} s"
        for line in stdout.splitlines():
            if line.startswith("RESULT "):
                row.update(json.loads(line[len("RESULT "):]))
        row["wall_s"] = time.perf_counter() - start
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_tables(result: dict) -> None:
    if result.get("speed"):
        batches = result["batch_sizes"]
        print(f"\n{result['model']} dummy weights, {result['device']}, context {result['context']}, "
              f"{result['num_seqs']} nano-vllm sequences")
        print(f"{'mode':9} {'weight GiB':>10} {'KV blocks':>9} " + " ".join(f"{'ms @' + str(b):>8}" for b in batches)
              + f" {'tok/s':>8}  error")
        for r in result["speed"]:
            print(f"{r['mode']:9} {_fmt(r.get('weight_gib'), '10.2f')} {_fmt(r.get('kv_blocks'), '9d')} "
                  + " ".join(_fmt(r.get(f"step_ms_b{b}"), "8.2f") for b in batches)
                  + f" {_fmt(r.get('throughput_tok_s'), '8.0f')}  {r.get('error', '')}")
    if result.get("quality"):
        print(f"\nquality: {result['quality_model']}, {result['device']}, dtype {result['dtype'] or 'default'}")
        print(f"{'mode':9} {'KV':5} {'weight GiB':>10} {'greedy agree':>12} {'identical':>9} {'1st token':>9} "
              f"{'max logit err':>13} {'rel RMS err':>11}")
        for r in result["quality"]:
            if "error" in r:
                print(f"{r['mode']:9} {r['kv_cache_dtype']:5} {r['error']}")
                continue
            print(f"{r['mode']:9} {r['kv_cache_dtype']:5} {r['weight_gib']:10.3f} {r['greedy_prefix_agreement']:12.1%} "
                  f"{r['prompts_identical']:>4d}/{r['prompts']:<4d} {r['first_token_agreement']:9.0%} "
                  f"{r['max_logit_error']:13.3f} {r['relative_rms_logit_error']:11.2%}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    ap.add_argument("--model", default="Qwen/Qwen3-8B", help="a dummy-weight preset (speed)")
    ap.add_argument("--tokenizer", help="tokenizer for the dummy model (not needed: prompts are token ids)")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--batch-sizes", default="1,64,256")
    ap.add_argument("--context", type=int, default=1024, help="cached tokens per sequence in the decode steps")
    ap.add_argument("--iters", type=int, default=20, help="timed decode steps per batch size")
    ap.add_argument("--num-seqs", type=int, default=256, help="nano-vllm workload size")
    ap.add_argument("--mode-timeout", type=float, default=130.0, help="seconds each mode's subprocess may take")
    ap.add_argument("--quick", action="store_true", help="64 sequences, 10 decode iterations, 100 s per mode")
    ap.add_argument("--quality", action="store_true", help="measure quality (on --quality-model) instead of speed")
    ap.add_argument("--quality-model", default="embedded")
    ap.add_argument("--quality-tokens", type=int, default=32, help="greedy tokens per quality prompt")
    ap.add_argument("--device", help="quality: the device (default: cuda if present)")
    ap.add_argument("--dtype", help="quality: the model dtype (default: float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"],
                    help="quality: the KV cache of every run but the reference")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--one-mode", help=argparse.SUPPRESS)  # the subprocess of one mode
    args = ap.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        ap.error(f"unknown modes {unknown}; choose from {MODES}")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.quick:
        args.num_seqs, args.iters, args.mode_timeout = 64, 10, min(args.mode_timeout, 100.0)
    if args.one_mode:
        speed_one_mode(args, args.one_mode)
        return 0

    # The GPU's name comes from the subprocesses: asking here would hold a CUDA context (memory) in this one.
    cpu = args.device == "cpu" or not torch.cuda.is_available()
    result = {"device": f"cpu, {torch.get_num_threads()} threads" if cpu else "cuda", "torch": torch.__version__,
              "model": args.model, "context": args.context,
              "num_seqs": args.num_seqs, "batch_sizes": args.batch_sizes, "quality_model": args.quality_model,
              "dtype": args.dtype}
    try:
        import bitsandbytes
        result["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        result["bitsandbytes"] = None
    if args.quality:
        result["quality"] = quality(args)
    else:
        if not torch.cuda.is_available():
            ap.error("the speed figures need a GPU (use --quality on a CPU)")
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        result["speed"] = speed(args)
        result["device"] = next((r["device"] for r in result["speed"] if "device" in r), "cuda")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
