"""The course grader's rules for GraphDev and MMLU, reproduced exactly (see data/README.md).

Both graders read only the returned `text`, and an empty text scores 0. Their quirks are kept on
purpose, since they decide the official score:

GraphDev
    1. JSON: the greedy match from the first "{" to the last "}" (across lines) must load as an
       object whose "paths" is a non-empty list starting with an object that has a "path"; then
       every entry must have "path" and "weight", or the JSON form fails as a whole.
    2. Otherwise the first `submit_paths(paths=[...], weights=[...])` call, and only if there is
       none, the first `submit_paths(weights=[...], paths=[...])`. The course runs Python `eval`
       on the two lists; here `_literal` evaluates them without executing anything: literals,
       lists, tuples and arithmetic (+ - * / //) on numbers, which covers what an honest answer
       writes (`weights=[10+15]` included). Whatever else `eval` would run (names, calls,
       attributes, `**`) counts as a failed evaluation, which makes the grader move on to the
       other argument order, not to a later call.
    Score: |{(tuple(path), weight)} predicted ∩ gold| / |gold|. Duplicates count once, paths
    beyond P cost nothing, the i-th path pairs with the i-th weight (a path without one is
    dropped), and a weight must equal the true cost (Python equality: 25.0 == 25).

MMLU
    The first match of `The answer is\\s*\\(?([A-Z])\\)?`, case-insensitive, upper-cased: so "the
    answer is probably ..." answers "P", "The answer is: B" matches nothing, and an earlier "the
    answer is" in leaked reasoning wins. Without a match the course falls back to
    `math_verify.parse`; `boxed_letter` stands in for it (its docstring says what it covers).
"""

import ast
import json
import re

_JSON_SPAN = re.compile(r"\{.*\}", re.DOTALL)
# The course's two patterns, verbatim: lazy lists, so nesting is resolved by backtracking.
_CALL_PATHS_FIRST = re.compile(
    r"submit_paths\s*\(\s*paths\s*=\s*(\[.*?\])\s*,\s*weights\s*=\s*(\[.*?\])\s*\)", re.DOTALL)
_CALL_WEIGHTS_FIRST = re.compile(
    r"submit_paths\s*\(\s*weights\s*=\s*(\[.*?\])\s*,\s*paths\s*=\s*(\[.*?\])\s*\)", re.DOTALL)

_ANSWER_IS = re.compile(r"The answer is\s*\(?([A-Z])\)?", re.IGNORECASE)
# math_verify looks for answers inside LaTeX: \boxed{...} first, then math delimiters.
_BOXED = re.compile(r"\\boxed\{")
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_LETTER = re.compile(r"\s*([A-Z])\s*")


def parse_graph_answer(text: str) -> tuple[list, list] | None:
    """`(paths, weights)` as the course grader reads them from `text`, or None if unparseable."""
    if not text or not text.strip():
        return None
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
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        return None


def _graph_call(text: str) -> tuple[list, list] | None:
    for pattern, paths_first in ((_CALL_PATHS_FIRST, True), (_CALL_WEIGHTS_FIRST, False)):
        call = pattern.search(text)
        if call is None:
            continue
        try:
            first, second = _literal(call.group(1)), _literal(call.group(2))
        except (ValueError, TypeError, SyntaxError, ZeroDivisionError, RecursionError):
            continue
        return (first, second) if paths_first else (second, first)
    return None


def _literal(source: str):
    """The value of a Python expression made only of literals, lists, tuples and number arithmetic.

    Raises ValueError on anything else, so nothing in the text is ever executed; operands of
    arithmetic must be numbers, so no operation can build a huge string or list.
    """
    return _evaluate(ast.parse(source.strip(), mode="eval").body)


_BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b}
_UNARY = {ast.USub: lambda a: -a, ast.UAdd: lambda a: +a}


def _evaluate(node: ast.AST):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List):
        return [_evaluate(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_number(_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_number(_evaluate(node.left)), _number(_evaluate(node.right)))
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


def _number(value):
    if not isinstance(value, (int, float)):
        raise ValueError(f"arithmetic on a non-number: {value!r}"[:80])
    return value


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
    """The letter the course grader reads from `text`: "The answer is (X)" first, else `boxed_letter`."""
    if not text or not text.strip():
        return None
    match = _ANSWER_IS.search(text)
    if match:
        return match.group(1).upper()
    return boxed_letter(text)


def boxed_letter(text: str) -> str | None:
    """A stand-in for the course's `math_verify.parse` fallback, for letter answers only.

    A letter gold scores only when math_verify extracts a string equal to it, which (checked
    against math_verify 0.8 and 0.9) needs a LaTeX answer of one uppercase letter, spaces allowed.
    This returns that letter in the two unambiguous cases:
      - exactly one `\\boxed{X}` in the text (boxes outrank all other math for math_verify), or
      - no box, exactly one math span `$X$`, `$$X$$`, `\\(X\\)` or `\\[X\\]`, and no digit
        outside it (math_verify prefers a number such as "5 mg" to a plain span).
    Everything else gives None: a bare "B", `\\boxed{b}`, `\\boxed{(B)}`, `\\boxed{\\text{B}}`,
    `\\boxed{B. Aspirin}` never equal the gold for math_verify either. Not covered: several
    boxes or spans, where math_verify merges them into a set (never a letter) or takes the
    rightmost one, by rules of priority, position and version; there this returns None, so it
    errs towards scoring 0.
    """
    boxes = _boxed_contents(text)
    if boxes:
        candidates = boxes
    elif any(c.isdigit() for c in _MATH_SPAN.sub("", text)):
        return None
    else:
        candidates = [next(g for g in span.groups() if g is not None) for span in _MATH_SPAN.finditer(text)]
    if len(candidates) != 1:
        return None
    letter = _LETTER.fullmatch(candidates[0])
    return letter.group(1) if letter else None


def _boxed_contents(text: str) -> list[str]:
    """The contents of every `\\boxed{...}`, braces balanced; an unclosed one is dropped."""
    contents = []
    for box in _BOXED.finditer(text):
        depth, start = 1, box.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                contents.append(text[start:i])
                break
    return contents


def score_mmlu(text: str, gold_letter: str) -> float:
    """1.0 if the letter the course grader reads from `text` is `gold_letter`, else 0.0."""
    return 1.0 if parse_mmlu_answer(text) == gold_letter.strip() else 0.0
