"""The course grader's rules for GraphDev and MMLU, reproduced exactly (see data/README.md).

Both graders read only the returned `text`, and an empty text scores 0. Their quirks are kept on
purpose, since they decide the official score:

GraphDev
    1. JSON: the greedy match from the first "{" to the last "}" (across lines) must load as an
       object whose "paths" is a non-empty list starting with an object that has a "path"; then
       every entry must have "path" and "weight", or the JSON form fails as a whole.
    2. Otherwise the first `submit_paths(paths=[...], weights=[...])` call, and only if there is
       none, the first `submit_paths(weights=[...], paths=[...])`. The course runs Python `eval`
       on the two lists; here `tasks.bounded_eval.evaluate` computes the same values without
       executing anything (`weights=[725] + []`, `[int(725)]`, `[list(range(0, 5, 2))]` and
       `[725*1**1]` included; its docstring lists what it covers and its bounds). When either
       list fails to evaluate, the grader moves on to the other argument order, not to a later
       call.
    Score: |{(tuple(path), weight)} predicted ∩ gold| / |gold|. Duplicates count once, paths
    beyond P cost nothing, the i-th path pairs with the i-th weight (a path without one is
    dropped), and a weight must equal the true cost (Python equality: 25.0 == 25).

MMLU
    The first match of `The answer is\\s*\\(?([A-Z])\\)?`, case-insensitive, upper-cased: so "the
    answer is probably ..." answers "P", "The answer is: B" matches nothing, and an earlier "the
    answer is" in leaked reasoning wins. Without a match the course falls back to
    `math_verify.parse`; `tasks.mmlu_fallback.fallback_letter` reproduces what it yields for a
    letter (`Dose 5 mg. $D$` reads "D", `$B$ for a 45-year-old` reads nothing; its docstring
    gives the rules).
"""

import json
import re

from tasks.bounded_eval import evaluate
from tasks.mmlu_fallback import fallback_letter

_JSON_SPAN = re.compile(r"\{.*\}", re.DOTALL)
# The course's two patterns, verbatim: lazy lists, so nesting is resolved by backtracking.
_CALL_PATHS_FIRST = re.compile(
    r"submit_paths\s*\(\s*paths\s*=\s*(\[.*?\])\s*,\s*weights\s*=\s*(\[.*?\])\s*\)", re.DOTALL)
_CALL_WEIGHTS_FIRST = re.compile(
    r"submit_paths\s*\(\s*weights\s*=\s*(\[.*?\])\s*,\s*paths\s*=\s*(\[.*?\])\s*\)", re.DOTALL)

_ANSWER_IS = re.compile(r"The answer is\s*\(?([A-Z])\)?", re.IGNORECASE)


def parse_graph_answer(text: str) -> tuple[list, list] | None:
    """`(paths, weights)` as the course grader reads them from `text`, or None if unparseable."""
    if not text or not text.strip():
        return None
    text = text.strip()
    return _graph_json(text) or _graph_call(text)


def _graph_json(text: str) -> tuple[list, list] | None:
    span = _JSON_SPAN.search(text)
    if span is None:
        return None
    try:
        answer = json.loads(span.group())
        entries = answer["paths"]
        if not (isinstance(entries, list) and entries and isinstance(entries[0], dict)
                and "path" in entries[0]):
            return None
        return [e["path"] for e in entries], [e["weight"] for e in entries]
    except (ValueError, KeyError, TypeError, IndexError):  # ValueError: bad JSON, or an int too long to read
        return None


def _graph_call(text: str) -> tuple[list, list] | None:
    for pattern, paths_first in ((_CALL_PATHS_FIRST, True), (_CALL_WEIGHTS_FIRST, False)):
        call = pattern.search(text)
        if call is None:
            continue
        try:
            first, second = evaluate(call.group(1)), evaluate(call.group(2))
        except Exception:  # the course's bare `except:` around eval: any failure tries the next pattern
            continue
        return (first, second) if paths_first else (second, first)
    return None


def score_graph(text: str, gold: dict) -> float:
    """The GraphDev score of `text` against `gold` = `{"paths": [{"path": [...], "weight": w}, ...]}`."""
    parsed = parse_graph_answer(text)
    gold_set = {(tuple(g["path"]), g["weight"]) for g in gold["paths"]}
    if parsed is None or not gold_set:
        return 0.0
    paths, weights = parsed
    try:
        predicted = {(tuple(path), weight) for path, weight in zip(paths, weights)}
    except TypeError:
        # A path that is not a sequence, or an unhashable element: the course grader would
        # crash here; it is an unusable answer.
        return 0.0
    return len(gold_set & predicted) / len(gold_set)


def parse_mmlu_answer(text: str) -> str | None:
    """The letter the course grader reads from `text`: "The answer is (X)" first, else math_verify's."""
    if not text or not text.strip():
        return None
    text = text.strip()
    match = _ANSWER_IS.search(text)
    if match:
        return match.group(1).upper()
    return fallback_letter(text)


def score_mmlu(text: str, gold_letter: str) -> float:
    """1.0 if the letter the course grader reads from `text` is `gold_letter`, else 0.0."""
    return 1.0 if parse_mmlu_answer(text) == gold_letter.strip() else 0.0
