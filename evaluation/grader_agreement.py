"""How often `tasks.scoring` gives the course grader's score, on generated variants of answers.

    pip install math-verify==0.9.0          # the course grader's version; not a Switchyard dependency
    python -m evaluation.grader_agreement --variants 24

For each GraphDev and MMLU dev_test item, `--variants` answers are drawn (seeded) from the forms
models write and the grader's corner cases: GraphDev calls whose lists are literals or Python
expressions, in either argument order, JSON answers, prose and code fences around them, wrong,
duplicate and extra paths; MMLU letters in "The answer is (X)" forms, LaTeX spans, boxes, bold,
option lines, next to numbers and to other letters. Each is scored by `tasks.scoring` and by the
course grader's rules as its code states them: for GraphDev its regular expressions and Python
`eval` (safe here: the script evaluates only strings it generated itself), for MMLU its regular
expression and then `math_verify.parse` and `math_verify.verify`. Prints the agreement per family
and every disagreement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
from collections import Counter

from evaluation.sets import load_items
from tasks.scoring import score_graph, score_mmlu

# ---------------------------------------------------------------- the course grader's rules

_CALLS = [r"submit_paths\s*\(\s*paths\s*=\s*(\[.*?\])\s*,\s*weights\s*=\s*(\[.*?\])\s*\)",
          r"submit_paths\s*\(\s*weights\s*=\s*(\[.*?\])\s*,\s*paths\s*=\s*(\[.*?\])\s*\)"]


def course_graph_score(text: str, gold: dict) -> float:
    """The course's GraphDev score, with its own `eval`; only for strings this script generated."""
    parsed = None
    text = text.strip()
    try:
        answer = json.loads(re.search(r"\{.*\}", text, re.DOTALL).group(0))
        entries = answer["paths"]
        if isinstance(entries, list) and entries and isinstance(entries[0], dict) and "path" in entries[0]:
            parsed = [e["path"] for e in entries], [e["weight"] for e in entries]
    except (AttributeError, ValueError, KeyError, TypeError, IndexError):
        pass
    for i, pattern in enumerate(_CALLS):
        match = None if parsed else re.search(pattern, text, re.DOTALL)
        if match:
            try:
                first, second = eval(match.group(1)), eval(match.group(2))  # generated text only
            except Exception:
                continue
            parsed = (first, second) if i == 0 else (second, first)
    if parsed is None:
        return 0.0
    gold_set = {(tuple(g["path"]), g["weight"]) for g in gold["paths"]}
    paths, weights = parsed
    predicted = {(tuple(p), weights[i]) for i, p in enumerate(paths) if i < len(weights)}
    return len(gold_set & predicted) / len(gold_set)


def course_mmlu_score(text: str, gold: str) -> float:
    """The course's MMLU score: its regular expression, else math_verify 0.9.0's parse; then verify."""
    import math_verify
    text = text.strip()
    match = re.search(r"The answer is\s*\(?([A-Z])\)?", text, re.IGNORECASE)
    parsed = [match.group(1).upper()] if match else (math_verify.parse(text) or None)
    return 1.0 if math_verify.verify(gold, parsed) else 0.0


# ---------------------------------------------------------------- GraphDev variants

def _int_list(rng: random.Random, xs: list[int]) -> str:
    """A Python expression whose value is the list `xs` (or a tuple/range with the same items)."""
    literal = "[" + ", ".join(map(str, xs)) + "]"
    forms = [literal, literal.replace(" ", ""), "(" + ", ".join(map(str, xs)) + ("," if len(xs) == 1 else "") + ")",
             f"list({literal})", f"[{xs[0]}] + {literal[:1]}{', '.join(map(str, xs[1:]))}]"]
    if xs == sorted(xs):
        forms.append(f"sorted({literal[:1]}{', '.join(map(str, reversed(xs)))}])")
    steps = {b - a for a, b in itertools.pairwise(xs)}
    if len(steps) == 1 and steps != {0}:
        step = steps.pop()
        forms += [f"list(range({xs[0]}, {xs[-1] + step}, {step}))", f"[*range({xs[0]}, {xs[-1] + step}, {step})]"]
    return rng.choice(forms)


def _weight(rng: random.Random, w: int) -> str:
    a = rng.randint(0, w)
    return rng.choice([str(w), f"{w}.0", f"int({w})", f"float({w})", f"{w}*1**1", f"{a} + {w - a}", f"{w + a} - {a}",
                       f"-(-{w})", f"2*{w}/2", f"sum([{a}, {w - a}])", f"abs(-{w})", f"{w}//1", f"{w}*1.0",
                       str(w + 1), f"{w} + 1", f"max({w}, {a})", f"{w}**1", f"min([{w}, {w + 5}])"])


def graph_variant(rng: random.Random, gold: dict, n: int) -> str:
    """One answer to a GraphDev item with gold `gold` on `n` nodes."""
    pairs = [(g["path"], g["weight"]) for g in gold["paths"]]
    edit = rng.choice(["as is", "as is", "drop last", "duplicate", "extra", "reversed", "wrong weight", "swap weights"])
    if edit == "drop last" and len(pairs) > 1:
        pairs = pairs[:-1]
    elif edit == "duplicate":
        pairs = pairs + pairs[:1]
    elif edit == "extra":
        pairs = pairs + [([0, n - 1], 10 ** 6)]
    elif edit == "reversed":
        pairs = pairs[::-1]
    elif edit == "wrong weight":
        pairs = [(p, w + 1) if i == 0 else (p, w) for i, (p, w) in enumerate(pairs)]
    elif edit == "swap weights" and len(pairs) > 1:
        pairs = [(pairs[0][0], pairs[1][1]), (pairs[1][0], pairs[0][1])] + pairs[2:]
    form = rng.choice(["call", "call", "call", "weights first", "json", "split lists", "two calls", "spoiled json"])
    if form == "json":
        body = json.dumps({"paths": [{"path": p, "weight": w} for p, w in pairs]})
        return rng.choice(["", "Here is the answer:\n```json\n"]) + body + rng.choice(["", "\n```"])
    paths = [_int_list(rng, p) for p, _ in pairs]
    weights = [_weight(rng, w) for _, w in pairs]
    if form == "split lists":
        paths_src = " + ".join(f"[{p}]" for p in paths)
        weights_src = "[" + weights[0] + "]" + "".join(f" + [{w}]" for w in weights[1:]) + rng.choice(["", " + []"])
    else:
        paths_src, weights_src = "[" + ", ".join(paths) + "]", "[" + ", ".join(weights) + "]"
    call = (f"submit_paths(weights={weights_src}, paths={paths_src})" if form == "weights first"
            else f"submit_paths(paths={paths_src},{rng.choice([' ', chr(10) + '    '])}weights={weights_src})")
    if form == "two calls":
        call = f"submit_paths(paths=[[0, {n - 1}]], weights=[1])\nActually:\n" + call
    if form == "spoiled json":
        call = '{"paths": [{"path": [0, 1]}]}\n' + call
    prose = rng.choice(["", "The shortest path goes through the cheapest edges.\n", "Let me compute: 3 + 22 = 25.\n"])
    return prose + rng.choice(["", "```python\n"]) + call + rng.choice(["", "\n```", "\nDone."])


# ---------------------------------------------------------------- MMLU variants

_PREAMBLES = ["", "A 45-year-old man presents with chest pain. ", "Dose 5 mg. ", "Option $M$ is tempting but wrong. ",
              "Compare (5 mg) with 2/3 of the patients. ", "The final answer depends on 3 factors. ",
              "Answer: consider each option. ", "It costs $100 per dose. ", "Vitamin B12 deficiency. ",
              "<think>If the answer is M, the dose is wrong.</think>\n", "Step 1: rule out M.\n", "x = 3, so "]
_ANSWERS = ["$X$", "$$X$$", r"\(X\)", r"\[X\]", r"\boxed{X}", r"$\boxed{X}$", r"\boxed{\text{X}}", r"$\text{X}$",
            r"$\mathrm{X}$", r"$X \text{ (the drug)}$", "I pick [X] here", "**X**", "(X)", "X.", "X. The drug",
            "Answer: X", "Answer: $X$", "answer: (X)", "The final answer is $X$. I hope it is correct.",
            r"The final answer is \boxed{X}", "The answer is (X)", "The answer is: X", "the answer is probably X",
            "The answer is $X$", r"Therefore, \boxed{X}.", "$X$ and $M$", r"\boxed{X} or \boxed{M}", r"\fbox{X}",
            "The correct option is $X$", r"$\boxed{ X }$", r"\boxed{X.}", "$X$, since 2 + 2 = 4"]
_EPILOGUES = ["", " at 5 mg.", " for a 45-year-old.", " (see 2 studies)", "\n\nThis is correct.", " Total = 3.",
              " $M$ is wrong.", " 10%", "\nAnswer: M", " It is the answer.", r" \boxed{M}"]


def mmlu_variant(rng: random.Random, gold: str) -> str:
    """One answer to an MMLU item whose gold is `gold`: a preamble, a letter in some form, an ending."""
    other = rng.choice([c for c in "ABCD" if c != gold])
    letter = rng.choice([gold, gold, other, gold.lower()])
    text = rng.choice(_PREAMBLES) + rng.choice(_ANSWERS).replace("X", letter) + rng.choice(_EPILOGUES)
    return text.replace("M", other)


# ---------------------------------------------------------------- the comparison

def compare(variants: int, seed: int = 0) -> dict:
    """Agreement counts per task and every disagreement, over `variants` answers per dev_test item."""
    rng = random.Random(seed)
    agree, total, disagreements = Counter(), Counter(), []
    for item in load_items("graphdev"):
        n = int(re.search(r"with (\d+) nodes", item.prompt).group(1))
        for _ in range(variants):
            text = graph_variant(rng, item.gold, n)
            ours, course = score_graph(text, item.gold), course_graph_score(text, item.gold)
            total["graphdev"] += 1
            agree["graphdev"] += ours == course
            if ours != course:
                disagreements.append({"task": "graphdev", "text": text, "ours": ours, "course": course})
    for item in load_items("mmlu_med"):
        for _ in range(variants):
            text = mmlu_variant(rng, item.gold)
            ours, course = score_mmlu(text, item.gold), course_mmlu_score(text, item.gold)
            total["mmlu_med"] += 1
            agree["mmlu_med"] += ours == course
            if ours != course:
                disagreements.append({"task": "mmlu_med", "text": text, "ours": ours, "course": course})
    return {"agree": dict(agree), "total": dict(total), "disagreements": disagreements}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.grader_agreement", description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", type=int, default=24, help="answers drawn per dev_test item")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import math_verify  # noqa: F401
    except ImportError:
        print("error: needs the course grader's math_verify: pip install math-verify==0.9.0", file=sys.stderr)
        return 2
    result = compare(args.variants, args.seed)
    for d in result["disagreements"]:
        print(json.dumps(d))
    print(json.dumps({"agree": result["agree"], "total": result["total"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
