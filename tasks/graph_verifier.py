"""Checking a model's own GraphDev answer against the prompt's graph, and picking the best of several.

The verifier never solves the instance (serving must not call `tasks.graph_oracle`'s search): it
only reads the graph the prompt states and tests the paths the model proposed. A proposed path is
kept if it is a list of node ids that starts at node 0, ends at node N-1, visits no node twice and
follows edges that exist; its weight is recomputed from the edges (a parallel edge counts at its
cheapest, as in the oracle). Kept paths are de-duplicated and sorted by (weight, path), and the
answer is rewritten as one clean `submit_paths(paths=[...], weights=[...])` call.

Why this cannot lower the course score: an invalid path or a wrong weight never matches the gold,
extra paths beyond P cost nothing, and duplicates count once.
"""

from __future__ import annotations

from tasks.graph_oracle import adjacency, parse_graph_prompt
from tasks.scoring import parse_graph_answer

Path = tuple[list[int], int]


def _path_weight(path, n: int, out: dict[int, dict[int, int]]) -> int | None:
    """The exact weight of `path` if it is a valid simple 0 -> N-1 path, else None."""
    if not isinstance(path, (list, tuple)) or len(path) < 2:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in path):
        return None
    if path[0] != 0 or path[-1] != n - 1 or len(set(path)) != len(path):
        return None
    total = 0
    for s, t in zip(path, path[1:]):
        w = out.get(s, {}).get(t)  # a node id outside the graph has no edges
        if w is None:
            return None
        total += w
    return total


def valid_paths(prompt: str, text: str) -> list[Path]:
    """The valid paths `text` proposes for the graph in `prompt`, exact weights, sorted, unique.

    Empty if the prompt is not a graph prompt or the text has no parseable answer.
    """
    try:
        n, edges, _ = parse_graph_prompt(prompt)
    except ValueError:
        return []
    parsed = parse_graph_answer(text)
    if parsed is None or not isinstance(parsed[0], (list, tuple)):
        return []
    out = adjacency(n, edges)
    found = {}
    for path in parsed[0]:
        weight = _path_weight(path, n, out)
        if weight is not None:
            found[tuple(path)] = weight
    return sorted(((list(p), w) for p, w in found.items()), key=lambda pw: (pw[1], pw[0]))


def submit_call(paths: list[Path]) -> str:
    """The answer as the single call the course grader reads."""
    return (f"submit_paths(paths={[p for p, _ in paths]}, weights={[w for _, w in paths]})")


def rewrite(prompt: str, text: str) -> str:
    """`text` rewritten as a clean call of its valid paths; unchanged if it proposes none."""
    paths = valid_paths(prompt, text)
    return submit_call(paths) if paths else text


def candidate_key(prompt: str, text: str) -> tuple[int, int]:
    """How good a candidate looks without the answer: more valid paths (up to P), then lower total weight."""
    try:
        p = parse_graph_prompt(prompt)[2]
    except ValueError:
        return (0, 0)
    top = valid_paths(prompt, text)[:p]
    return (len(top), -sum(w for _, w in top))


def pick_best(prompt: str, texts: list[str]) -> int:
    """The index of the best candidate by `candidate_key`; the earliest wins a tie."""
    keys = [candidate_key(prompt, t) for t in texts]
    return max(range(len(texts)), key=lambda i: (keys[i], -i))
