"""The exact GraphDev answer: the top-P shortest simple paths from node 0 to node N-1.

The course's gold is the exact K shortest *simple* paths in non-decreasing cost, a tie broken by
the lexicographically smaller path (as a list of node ids). `top_p_paths` computes it with an A*
search over whole paths; `parse_graph_prompt` reads an instance back from its served prompt.

Why the search is exact
    Every heap entry is a simple path from the source, keyed by (cost so far + h(last node), path),
    where h(v) is the unrestricted shortest distance from v to the target. h never overestimates
    the cost of finishing a *simple* path, so every prefix of a complete path of cost c has a key
    of at most (c, prefix), and a proper prefix sorts before any longer list. So before a complete
    path C is popped, every complete path that sorts before it by (cost, path) has a prefix still
    waiting ahead of C in the heap: complete paths leave the heap exactly in (cost, path) order.
    Weights must be non-negative; the course draws them from 1..W.
"""

import heapq
import re

Edge = tuple[int, int, int]

_NODES = re.compile(r"directed\s+graph\s+with\s+(\d+)\s+nodes", re.IGNORECASE)
_EDGE = re.compile(r"(\d+)\s*->\s*(\d+)\s*,\s*weight\s*:\s*(\d+)", re.IGNORECASE)
_TOP = re.compile(r"top\s+(\d+)\s+shortest\s+paths?", re.IGNORECASE)


def adjacency(n: int, edges: list[Edge]) -> dict[int, dict[int, int]]:
    """node -> {successor: weight}. Self-loops are dropped (no simple path uses one) and of parallel
    edges only the cheapest is kept, since a path is named by its nodes alone."""
    out: dict[int, dict[int, int]] = {v: {} for v in range(n)}
    for s, t, w in edges:
        if s != t and w < out[s].get(t, w + 1):
            out[s][t] = w
    return out


def top_p_paths(n: int, edges: list[Edge], p: int, source: int = 0,
                target: int | None = None) -> list[tuple[list[int], int]]:
    """The `p` cheapest simple paths from `source` to `target` (default `n - 1`), as `(path, cost)`.

    Ordered by (cost, path); fewer than `p` if fewer simple paths exist. Self-loops are ignored
    (no simple path uses one) and of parallel edges only the cheapest counts, since a path is
    named by its nodes alone.
    """
    target = n - 1 if target is None else target
    if any(w < 0 for _, _, w in edges):
        raise ValueError("edge weights must be non-negative")
    out = adjacency(n, edges)
    h = _distances_to(target, n, out)
    if source not in h:
        return []
    found: list[tuple[list[int], int]] = []
    heap = [(h[source], [source], 0)]
    while heap and len(found) < p:
        _, path, cost = heapq.heappop(heap)
        node = path[-1]
        if node == target:
            found.append((path, cost))
            continue
        for nxt, w in out[node].items():
            # Nodes that cannot reach the target (absent from h) lead nowhere.
            if nxt in h and nxt not in path:
                heapq.heappush(heap, (cost + w + h[nxt], path + [nxt], cost + w))
    return found


def _distances_to(target: int, n: int, out: dict[int, dict[int, int]]) -> dict[int, int]:
    """Dijkstra on the reversed graph: the shortest distance from each node that reaches `target`."""
    into: dict[int, list[tuple[int, int]]] = {v: [] for v in range(n)}
    for s, targets in out.items():
        for t, w in targets.items():
            into[t].append((s, w))
    dist = {target: 0}
    heap = [(0, target)]
    while heap:
        d, v = heapq.heappop(heap)
        if d > dist[v]:
            continue
        for u, w in into[v]:
            if d + w < dist.get(u, d + w + 1):
                dist[u] = d + w
                heapq.heappush(heap, (d + w, u))
    return dist


def gold_answer(n: int, edges: list[Edge], p: int) -> dict:
    """The gold in the course's format: `{"paths": [{"path": [...], "weight": w}, ...]}`."""
    return {"paths": [{"path": path, "weight": cost} for path, cost in top_p_paths(n, edges, p)]}


def parse_graph_prompt(prompt: str) -> tuple[int, list[Edge], int]:
    """`(n, edges, p)` read from a GraphDev prompt; edges keep their order. Raises ValueError.

    Whitespace between tokens may be any run of spaces or line breaks, and case is ignored.
    """
    nodes, top = _NODES.search(prompt), _TOP.search(prompt)
    edges = [(int(s), int(t), int(w)) for s, t, w in _EDGE.findall(prompt)]
    if nodes is None or top is None or not edges:
        raise ValueError("not a graph prompt: needs the node count, edges and 'top P shortest paths'")
    n = int(nodes.group(1))
    if any(not (0 <= s < n and 0 <= t < n) for s, t, _ in edges):
        raise ValueError(f"an edge names a node outside 0..{n - 1}")
    return n, edges, int(top.group(1))
