"""MMLU answer enforcement replayed on two evaluation runs: the constrained letter alone, or a committed one first.

    echo '{"mmlu_med": {"enforce_answer_format": false}}' > off.json
    python evaluate_local.py --task mmlu_med --limit 20 --policy off.json --output raw.json
    python evaluate_local.py --task mmlu_med --limit 20 --output enforced.json    # default policy: on
    python -m evaluation.enforcement_replay raw.json enforced.json

Greedy decoding makes the model's text the same in both runs, so the enforced run's output is
that text plus, where the grader read no letter from it, the appended "The answer is (X)." with
the letter the constrained step chose. For each item this scores, with `tasks.scoring`: the text
as the model left it; the text with the constrained letter (what the enforced run returned); and
the text with `committed_letter`'s letter when the text commits to one, else the same constrained
letter (what enforcement that reads the committed letter first returns). Prints the three mean
scores, how many texts were fixed up, committed to a letter, or contradicted by the constrained
letter, and each contradiction.
"""

from __future__ import annotations

import argparse
import json
import sys

from tasks.answer_format import committed_letter, needs_answer, with_answer
from tasks.scoring import score_mmlu


def replay(raw: list[dict], enforced: list[dict]) -> dict:
    """The three scores and counts for MMLU records of the same items without and with enforcement."""
    by_idx = {r["prompt_idx"]: r for r in enforced if r["task"] == "mmlu_med"}
    counts = {"items": 0, "fixed_up": 0, "committed": 0, "contradicted": 0, "mismatched": 0}
    scores = {"without": 0.0, "constrained": 0.0, "committed_first": 0.0}
    contradictions = []
    for record in (r for r in raw if r["task"] == "mmlu_med"):
        text, gold, returned = record["output"], record["gold"], by_idx[record["prompt_idx"]]["output"]
        counts["items"] += 1
        scores["without"] += score_mmlu(text, gold)
        scores["constrained"] += score_mmlu(returned, gold)
        if not needs_answer(text):
            counts["mismatched"] += returned != text
            scores["committed_first"] += score_mmlu(text, gold)
            continue
        constrained = next((x for x in "ABCD" if with_answer(text, x) == returned), None)
        if constrained is None:  # the two runs' texts differ: leave this item as the enforced run returned it
            counts["mismatched"] += 1
            scores["committed_first"] += score_mmlu(returned, gold)
            continue
        committed = committed_letter(text)
        counts["fixed_up"] += 1
        counts["committed"] += committed is not None
        scores["committed_first"] += score_mmlu(with_answer(text, committed or constrained), gold)
        if committed not in (None, constrained):
            counts["contradicted"] += 1
            contradictions.append({"prompt_idx": record["prompt_idx"], "gold": gold, "committed": committed,
                                   "constrained": constrained, "text_end": text[-100:]})
    mean = {f"score_{k}": round(v / max(counts["items"], 1), 3) for k, v in scores.items()}
    return {**counts, **mean, "contradictions": contradictions}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.enforcement_replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("raw", help="evaluate_local.py --output of an MMLU run with enforce_answer_format off")
    ap.add_argument("enforced", help="the same items' run with it on")
    args = ap.parse_args(argv)
    with open(args.raw) as f, open(args.enforced) as g:
        print(json.dumps(replay(json.load(f)["records"], json.load(g)["records"]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
