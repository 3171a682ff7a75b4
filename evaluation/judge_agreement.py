"""How often a judge agrees with the reference verdicts on InfoBench's GPT-4 outputs.

    python -m evaluation.judge_agreement --items 10                 # the embedded model as judge
    python -m evaluation.judge_agreement --items 10 --server http://127.0.0.1:8000

`data/infobench/reference_gpt4_outputs_with_eval.jsonl` holds a GPT-4 output and a verdict per
decomposed question for each InfoBench row. The judge answers the same questions on the same
outputs through the DRFR protocol; agreement = matching verdicts / questions (an unreadable or
missing verdict counts as not-YES, as in scoring).
"""

from __future__ import annotations

import argparse
import json
import sys

from tasks.fresh_prompts import DATA_DIR, infobench_rows
from tasks.infobench_judge import judge_item


def agreement(chat, references: list[dict], rows: dict[str, dict]) -> dict:
    """Per-question agreement of `chat`'s verdicts with the reference labels."""
    agree = total = judge_yes = reference_yes = 0
    for ref in references:
        row = rows[ref["id"]]
        verdicts = judge_item(chat, ref["output"], row["decomposed_questions"])
        for verdict, label in zip(verdicts, ref["eval"]):
            agree += (verdict is True) == bool(label)
            judge_yes += verdict is True
            reference_yes += bool(label)
            total += 1
    return {"items": len(references), "questions": total, "agreement": agree / total if total else 0.0,
            "judge_yes_rate": judge_yes / total if total else 0.0,
            "reference_yes_rate": reference_yes / total if total else 0.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.judge_agreement", description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=10, help="the first N reference items")
    ap.add_argument("--model", default="embedded", help="in-process judge model")
    ap.add_argument("--server", help="judge with the model of a running server at this URL instead")
    args = ap.parse_args(argv)
    from evaluation.backends import HttpBackend, InProcessBackend
    backend = HttpBackend(args.server) if args.server else InProcessBackend(["--model", args.model])
    path = DATA_DIR / "infobench" / "reference_gpt4_outputs_with_eval.jsonl"
    references = [json.loads(line) for line in path.read_text().splitlines()[:args.items]]
    try:
        result = agreement(lambda messages: backend.chat(messages, 0.0), references,
                           {r["id"]: r for r in infobench_rows()})
    finally:
        backend.close()
    print(json.dumps({"judge": f"local judge: {backend.model}", **result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
