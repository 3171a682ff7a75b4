"""Command line: complete prompts with the engine and print the results.

    python -m scheduler --prompt "The capital of France is" --max-tokens 32
    python -m scheduler --chat --prompt "What is the capital of France?"
"""

from __future__ import annotations

import argparse
import sys
import time

from models.errors import ModelLoadError
from models.quantization import MODES
from models.sampler import SamplingParams
from scheduler.llm import LLM


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded",
                    help="'embedded' (SmolLM2-135M-Instruct, the default), an HF model dir, a .gguf file or a hub id")
    ap.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    ap.add_argument("--prompt", action="append", required=True, help="repeat for several prompts (one batch)")
    ap.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--stop", action="append", default=[])
    ap.add_argument("--device")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--quantization", default="none", choices=MODES,
                    help="the decoder layers' weights (see README: Quantization and presets)")
    args = ap.parse_args(argv)
    try:
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, seed=args.seed, stop=args.stop)
        llm = LLM(args.model, load_format=args.load_format, device=args.device, dtype=args.dtype,
                  quantization=args.quantization)
        start = time.perf_counter()
        if args.chat:
            outputs = llm.chat([[{"role": "user", "content": p}] for p in args.prompt], params)
        else:
            outputs = llm.generate(args.prompt, params)
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    for prompt, out in zip(args.prompt, outputs):
        choice = out.outputs[0]
        print(f"### prompt: {prompt!r}\n{choice.text}\n[{len(choice.token_ids)} tokens, "
              f"finish_reason={choice.finish_reason}]\n")
    total = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"{total} tokens in {elapsed:.2f} s ({total / elapsed:.1f} tokens/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
