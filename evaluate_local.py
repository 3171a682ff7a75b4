"""Evaluate Switchyard on the course's dev_test prompts: GraphDev, MMLU Medicine, InfoBench.

    python evaluate_local.py --task all --limit 20                         # in-process, embedded model
    python evaluate_local.py --config system1 --gpu-memory-utilization 0.8 # any `python -m api` flag
    python evaluate_local.py --task mmlu_med --server http://127.0.0.1:8000
    python evaluate_local.py --plot runs.jsonl --plot-output pareto.png

Prompts are sent exactly as the course client sends them, `{"prompt": [...], "max_tokens": 2048}`
per batch, either to a running server (`--server`) or to the same `CompletionService` the server
builds (in-process), so routing and the per-task policy are identical. GraphDev and MMLU are
scored with the course grader's rules (`tasks.scoring`); InfoBench with its DRFR judge protocol
(`tasks.infobench_judge`), by default judged by the evaluated model itself, which is labelled
"local judge: <model>" in the output since it is far weaker than the course's judge.

In-process, every flag this script does not define is one of `python -m api`'s and configures the
server it builds (`--config` presets, `--max-model-len`, `--small-device`, ...). Writes per-item
records and a summary to `--output`, and appends one row per run to `--runs`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from evaluation.sets import TASKS, Item, load_items
from models.errors import ModelLoadError
from models.quantization import MODES as QUANTIZATION_MODES
from tasks.infobench_judge import add_judge_arguments, chat_from_args, judge_item, item_score
from tasks.scoring import parse_graph_answer, parse_mmlu_answer, score_graph, score_mmlu

COURSE_MAX_TOKENS = 2048  # what the course client asks for


def parse_args(argv=None) -> argparse.Namespace:
    """evaluate_local.py's own flags; the rest, kept in `server_flags`, are the in-process server's."""
    ap = argparse.ArgumentParser(prog="evaluate_local.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
                                 epilog="Any other flag is passed to the in-process server: see python -m api --help.")
    ap.add_argument("--task", default="all", choices=TASKS + ("all",))
    ap.add_argument("--limit", type=int, help="first N items of each task (default: all 100)")
    ap.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                    help="prompts per request, as the course batches them (--batch_size: the course's spelling)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    ap.add_argument("--output", default="results.json")
    ap.add_argument("--runs", default="runs.jsonl", help="JSON-lines file that gets one summary row per run")
    ap.add_argument("--label", help="name of this run in the runs file and plot (default: backend and policy)")
    ap.add_argument("--model", help="in-process large model (as `python -m api --model`; default: the embedded "
                                     "model, or the --config preset's)")
    ap.add_argument("--small-model", help="in-process small model")
    ap.add_argument("--policy", help="in-process policy JSON file (see tasks/policy.py)")
    ap.add_argument("--server", help="evaluate a running server at this URL instead, e.g. http://127.0.0.1:8000")
    ap.add_argument("--max-tokens", type=int, default=COURSE_MAX_TOKENS,
                    help="max_tokens sent with each request (the course sends 2048; the policy still caps it)")
    ap.add_argument("--request-timeout", type=float, default=7200.0,
                    help="seconds a request may take before it fails (a CPU run at the full budget is slow); "
                         "give a server its own --request-timeout too")
    ap.add_argument("--quantization", choices=QUANTIZATION_MODES,
                    help="in-process: both models' decoder weights (see python -m api --help; default: none, or "
                         "the --config preset's)")
    ap.add_argument("--use_8bit", action="store_true", help="the course's spelling of --quantization bnb-8bit")
    ap.add_argument("--use_4bit", action="store_true", help="the course's spelling of --quantization bnb-4bit")
    add_judge_arguments(ap)
    ap.add_argument("--plot", metavar="RUNS_FILE", help="only plot accuracy vs throughput from a runs file")
    ap.add_argument("--plot-output", default="pareto.png")
    args, args.server_flags = ap.parse_known_args(argv)
    return args


def _extract(task: str, text: str):
    if task == "graphdev":
        return parse_graph_answer(text)
    if task == "mmlu_med":
        return parse_mmlu_answer(text)
    return None


def _score(task: str, text: str, gold) -> float:
    return score_graph(text, gold) if task == "graphdev" else score_mmlu(text, gold)


def generate(backend, items: list[Item], args) -> list[dict]:
    """Send the items in batches of `--batch_size`; one record per item, in item order."""
    batches = [items[i:i + args.batch_size] for i in range(0, len(items), args.batch_size)]

    def send(batch: list[Item]) -> list[dict]:
        start = time.monotonic()
        try:
            body = backend.complete({"prompt": [it.prompt for it in batch], "max_tokens": args.max_tokens})
        except Exception as e:  # a failed request scores 0 for its items, as with the course's grader
            error = f"{type(e).__name__}: {e}"
            print(f"warning: a batch of {len(batch)} {batch[0].task} prompts failed: {error}", file=sys.stderr)
            return [{"task": it.task, "prompt_idx": it.prompt_idx, "prompt": it.prompt, "output": "",
                     "routed_task": None, "tokens": 0, "latency_s": round(time.monotonic() - start, 3),
                     "error": error} for it in batch]
        latency = time.monotonic() - start
        choices = sorted(body["choices"], key=lambda c: c["index"])
        # Other servers give only the request's usage; split it evenly then.
        share = body.get("usage", {}).get("completion_tokens", 0) / len(batch)
        return [{"task": it.task, "prompt_idx": it.prompt_idx, "prompt": it.prompt, "output": c["text"],
                 "routed_task": c.get("task"), "tokens": c.get("completion_tokens", share),
                 "latency_s": round(latency, 3)} for it, c in zip(batch, choices)]

    records = []
    with ThreadPoolExecutor(args.concurrency) as pool, \
            tqdm(total=len(items), desc=f"{items[0].task} generate", file=sys.stderr) as bar:
        for batch_records in pool.map(send, batches):
            records += batch_records
            bar.update(len(batch_records))
    return records


def judge(chat, items: list[Item], records: list[dict], concurrency: int) -> None:
    """Score InfoBench records in place by the DRFR protocol, items judged concurrently."""
    def one(pair):
        item, record = pair
        verdicts = judge_item(chat, record["output"], item.gold["questions"])
        record.update(extracted=verdicts, score=item_score(verdicts), infobench_id=item.gold["id"])

    with ThreadPoolExecutor(concurrency) as pool, \
            tqdm(total=len(items), desc="infobench judge", file=sys.stderr) as bar:
        for _ in pool.map(one, zip(items, records)):
            bar.update(1)


def evaluate_task(backend, chat, task: str, args) -> tuple[list[dict], dict]:
    """Records and summary of one task."""
    items = load_items(task, args.limit)
    start = time.monotonic()
    records = generate(backend, items, args)
    elapsed = time.monotonic() - start
    if task == "infobench":
        judge(chat, items, records, args.concurrency)
    else:
        for item, record in zip(items, records):
            extracted = _extract(task, record["output"])
            record.update(extracted=extracted, score=_score(task, record["output"], item.gold), gold=item.gold)
    scores = [r["score"] for r in records]
    summary = {"accuracy": sum(scores) / len(scores), "items": len(records),
               "tokens_generated": round(sum(r["tokens"] for r in records)),
               "generation_elapsed_s": round(elapsed, 2), "requests_per_min": round(60 * len(records) / elapsed, 2),
               "misrouted": sum(r["routed_task"] not in (None, _ROUTER_LABEL[task]) for r in records),
               "failed_items": sum("error" in r for r in records)}
    if task != "infobench":
        summary["parseable"] = sum(r["extracted"] is not None for r in records) / len(records)
    return records, summary


_ROUTER_LABEL = {"graphdev": "graph", "mmlu_med": "mmlu_med", "infobench": "infobench"}


def _quantization(args) -> str | None:
    """The quantization mode the flags ask for (None: none asked); ValueError if they contradict each other."""
    asked = {args.quantization} - {None, "none"}
    asked |= {"bnb-8bit"} if args.use_8bit else set()
    asked |= {"bnb-4bit"} if args.use_4bit else set()
    if len(asked) > 1:
        raise ValueError(f"conflicting quantization flags: {sorted(asked)}")
    if asked and args.server:
        raise ValueError("quantization applies to in-process models; a --server is quantized by its own flags")
    return asked.pop() if asked else args.quantization


def _check_server_flags(args) -> None:
    """ValueError unless the flags evaluate_local.py does not define are the in-process server's."""
    if not args.server_flags:
        return
    if args.server:
        raise ValueError(f"{' '.join(args.server_flags)}: not a flag of evaluate_local.py, and a --server is "
                         "configured by its own flags")
    from api.config import argument_parser
    unknown = argument_parser().parse_known_args(args.server_flags)[1]
    if unknown:
        raise ValueError(f"unrecognized arguments (neither evaluate_local.py's nor python -m api's): "
                         f"{' '.join(unknown)}")


def _judge(args, backend):
    """The judge chat function and how to label it."""
    if args.judge_url or args.judge_model:
        return chat_from_args(args), f"judge: {args.judge_model} at {args.judge_url}"
    # Greedy unless asked otherwise, so the weak local judge at least gives repeatable verdicts.
    temperature = 0.0 if args.judge_temperature is None else args.judge_temperature
    return (lambda messages: backend.chat(messages, temperature)), f"local judge: {backend.model}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot:
        from evaluation.plot import plot_runs, read_runs
        try:
            plot_runs(read_runs(args.plot), args.plot_output)
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot_output}", file=sys.stderr)
        return 0
    try:
        _check_server_flags(args)
        quantization = _quantization(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = TASKS if args.task == "all" else (args.task,)
    if args.server:
        from evaluation.backends import HttpBackend
        backend = HttpBackend(args.server, timeout_s=args.request_timeout)
        backend_label = f"server {args.server}"
        small_model, policy = args.small_model, args.policy
    else:
        from evaluation.backends import InProcessBackend
        own = {"--model": args.model, "--small-model": args.small_model, "--policy": args.policy,
               "--request-timeout": str(args.request_timeout), "--quantization": quantization}
        server_argv = [arg for flag, value in own.items() if value is not None for arg in (flag, value)]
        try:
            backend = InProcessBackend(server_argv + args.server_flags)
        except (ModelLoadError, ValueError, OSError) as e:  # as `python -m api` reports them
            print(f"error: {e}", file=sys.stderr)
            return 2
        config = backend.config  # what the server runs, a --config preset's settings included
        quantization, small_model, policy = config.quantization, config.small_model, config.policy
        backend_label = "in-process" + (f", {quantization}" if quantization != "none" else "")
    chat, judge_label = _judge(args, backend)
    if "infobench" in tasks and judge_label.startswith("local judge"):
        print(f"warning: InfoBench is judged by {backend.model} itself, far weaker than the course's judge; "
              "its scores are indicative only (use --judge-url and --judge-model for a real judge)", file=sys.stderr)
    start = time.monotonic()
    records, per_task = [], {}
    try:
        for task in tasks:
            task_records, per_task[task] = evaluate_task(backend, chat, task, args)
            records += task_records
    finally:
        backend.close()
    elapsed = time.monotonic() - start
    generation_s = sum(s["generation_elapsed_s"] for s in per_task.values())
    label = args.label or f"{backend_label}, policy {policy or 'default'}, max_tokens {args.max_tokens}"
    summary = {
        "label": label, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "backend": backend_label, "model": backend.model, "small_model": small_model, "policy": policy,
        "quantization": None if args.server else quantization,
        "judge": judge_label if "infobench" in tasks else None, "limit": args.limit, "batch_size": args.batch_size,
        "max_tokens": args.max_tokens, "tasks": per_task,
        "mean_accuracy": sum(s["accuracy"] for s in per_task.values()) / len(per_task),
        "tokens_generated": sum(s["tokens_generated"] for s in per_task.values()),
        "requests_per_min": round(60 * len(records) / generation_s, 2),
        "tokens_per_s": round(sum(s["tokens_generated"] for s in per_task.values()) / generation_s, 2),
        "elapsed_s": round(elapsed, 2),
    }
    with open(args.output, "w") as f:
        json.dump({"summary": summary, "records": records}, f, indent=1)
    with open(args.runs, "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote per-item records to {args.output} and appended this summary to {args.runs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
