"""The exact GraphDev oracle, the prompt parser and the instance generator.

The oracle must agree with networkx's K shortest simple paths under the course's tie rule (the
lexicographically smaller path first), reproduce the exact gold of the older dev_test file, and
answer every served graph prompt with a score of 1.0. The generator must draw instances exactly
as the course's does.
"""

import itertools
import json
import random
from collections import Counter

import networkx as nx
import pytest

from tasks.fresh_prompts import DATA_DIR, random_graph
from tasks.graph_oracle import gold_answer, parse_graph_prompt, top_p_paths
from tasks.scoring import score_graph
from tasks.templates import graph_prompt

SERVED_GRAPHS = {i: p for batch in json.loads((DATA_DIR / "course" / "batch_arrivals.json").read_text())
                 for i, p in zip(batch["prompt_idxs"], batch["prompts"]) if i < 100}
V1_ROWS = [json.loads(line) for line in (DATA_DIR / "graphdev" / "dev_test_v1_hw2era.jsonl").open()]


def networkx_top_p(n: int, edges, p: int) -> list[tuple[list[int], int]]:
    """networkx's top `p`, with ties at the cut resolved by the course rule.

    networkx yields paths in non-decreasing cost but orders equal costs its own way, so take every
    path up to the p-th path's cost, then sort by (cost, path).
    """
    graph = nx.DiGraph()
    graph.add_weighted_edges_from(edges)
    taken: list[tuple[int, list[int]]] = []
    for path in nx.shortest_simple_paths(graph, 0, n - 1, weight="weight"):
        cost = nx.path_weight(graph, path, "weight")
        if len(taken) >= p and cost > taken[p - 1][0]:
            break
        taken.append((cost, path))
    return [(path, cost) for cost, path in sorted(taken)[:p]]


# ---------------------------------------------------------------- oracle against networkx

def test_oracle_equals_networkx_on_1000_generated_graphs():
    for seed in range(1000):
        n, edges, p = random_graph(random.Random(seed))
        assert top_p_paths(n, edges, p) == networkx_top_p(n, edges, p), f"seed {seed}"


def test_oracle_equals_networkx_deep_and_tie_heavy():
    """P up to 12 on graphs with weights 1..3, where many paths tie at every cost."""
    rng = random.Random(7)
    ties_at_cut = 0
    for _ in range(150):
        n = rng.randint(3, 20)
        m = rng.randint(2, min(10, n - 1))
        edges = [(i, (i + k) % n, rng.randint(1, 3)) for i in range(n) for k in range(1, m + 1)]
        p = rng.randint(1, 12)
        ours = top_p_paths(n, edges, p)
        assert ours == networkx_top_p(n, edges, p)
        deeper = top_p_paths(n, edges, p + 1)
        ties_at_cut += len(deeper) > p and deeper[p][1] == ours[-1][1]
    assert ties_at_cut > 30  # the tie rule was really exercised


def test_oracle_edge_cases():
    # Fewer simple paths than asked for: all of them, in order.
    assert top_p_paths(3, [(0, 1, 1), (1, 2, 1), (0, 2, 5)], 5) == [([0, 1, 2], 2), ([0, 2], 5)]
    # Unreachable target.
    assert top_p_paths(3, [(0, 1, 1), (2, 0, 1)], 2) == []
    # Cycles, self-loops and parallel edges: simple paths only, the cheapest parallel edge counts.
    edges = [(0, 1, 1), (1, 0, 1), (1, 1, 1), (1, 2, 9), (1, 2, 4), (0, 2, 6)]
    assert top_p_paths(3, edges, 3) == [([0, 1, 2], 5), ([0, 2], 6)]
    # An equal-cost tie is broken by the smaller path, whatever the edge order.
    edges = [(0, 2, 1), (2, 3, 1), (0, 1, 1), (1, 3, 1)]
    assert top_p_paths(4, edges, 1) == [([0, 1, 3], 2)]
    with pytest.raises(ValueError):
        top_p_paths(2, [(0, 1, -1)], 1)


# ---------------------------------------------------------------- the older dev_test's exact gold

def test_oracle_reproduces_v1_exact_gold():
    """Equal on every row but one, where `solution_exact` breaks a tie at the cut the other way.

    Row 24 (P = 1) has two paths of cost 268; `solution_exact` took [0, 3, 4, 8, 11, 15], the
    order networkx happens to yield, while the course's tie rule (and the v1 published gold) take
    [0, 2, 4, 8, 11, 15]. There the check is that both are exact: same costs, real paths.
    """
    tie_rows = []
    for row in V1_ROWS:
        n, edges, p = row["N"], [tuple(e) for e in row["edges"]], row["P"]
        ours, gold = gold_answer(n, edges, p), row["solution_exact"]
        if ours == gold:
            continue
        tie_rows.append(row["row"])
        assert [g["weight"] for g in gold["paths"]] == [o["weight"] for o in ours["paths"]]
        weight = {(s, t): w for s, t, w in edges}
        for g in gold["paths"]:
            assert len(set(g["path"])) == len(g["path"]) and (g["path"][0], g["path"][-1]) == (0, n - 1)
            assert sum(weight[e] for e in itertools.pairwise(g["path"])) == g["weight"]
    assert tie_rows == [24]
    assert gold_answer(V1_ROWS[24]["N"], V1_ROWS[24]["edges"], 1) == V1_ROWS[24]["solution_published_v1"]


def test_v1_rows_prompts_parse_to_their_fields():
    for row in V1_ROWS:
        assert parse_graph_prompt(row["prompt"]) == (row["N"], [tuple(e) for e in row["edges"]], row["P"])


# ---------------------------------------------------------------- the served graph prompts

def test_parse_graph_prompt_round_trips_the_served_prompts():
    assert sorted(SERVED_GRAPHS) == list(range(100))
    for idx, prompt in SERVED_GRAPHS.items():
        n, edges, p = parse_graph_prompt(prompt)
        assert graph_prompt(n, edges, p) == prompt, idx
        # The served graphs have the generator's structure.
        m = len(edges) // n
        assert [(s, t) for s, t, _ in edges] == [(i, (i + k) % n) for i in range(n) for k in range(1, m + 1)], idx
        assert 3 <= n <= 20 and 2 <= m <= min(10, n - 1) and p in (1, 2, 3)


def test_oracle_answers_score_full_marks_on_the_served_prompts():
    for idx, prompt in SERVED_GRAPHS.items():
        gold = gold_answer(*parse_graph_prompt(prompt))
        call = "submit_paths(paths={}, weights={})".format([g["path"] for g in gold["paths"]],
                                                          [g["weight"] for g in gold["paths"]])
        assert score_graph(json.dumps(gold), gold) == 1.0, idx
        assert score_graph(f"Done.\n{call}", gold) == 1.0, idx


def test_served_prompt_50_has_a_tie_at_the_cut():
    """The one served instance where the tie rule decides the gold (data README)."""
    n, edges, p = parse_graph_prompt(SERVED_GRAPHS[50])
    deeper = top_p_paths(n, edges, p + 1)
    assert deeper[p - 1][1] == deeper[p][1] and deeper[p - 1][0] < deeper[p][0]


def test_parse_graph_prompt_tolerates_whitespace_and_rejects_other_text():
    prompt = SERVED_GRAPHS[3]
    mangled = prompt.replace(" ", "  ").replace("\n", "\r\n").replace("-> ", "->").replace(", ", ",")
    assert parse_graph_prompt(mangled) == parse_graph_prompt(prompt)
    with pytest.raises(ValueError):
        parse_graph_prompt("Instruction: list three fruits\nQuestion: \nGeneration:")
    with pytest.raises(ValueError):  # an edge to a node the graph does not have
        parse_graph_prompt(graph_prompt(3, [(0, 1, 5), (1, 7, 2)], 1))


# ---------------------------------------------------------------- the generator

class RecordingRandom(random.Random):
    """A Random that logs the bounds of every randint call, to check the documented ranges."""

    def __init__(self, seed):
        super().__init__(seed)
        self.bounds: list[tuple[int, int]] = []

    def randint(self, a, b):
        self.bounds.append((a, b))
        return super().randint(a, b)


def test_generator_draws_the_documented_parameters():
    rng = RecordingRandom(0)
    ps, ns, ms = Counter(), Counter(), Counter()
    for _ in range(10_000):
        rng.bounds.clear()
        n, edges, p = random_graph(rng)
        (n_lo, n_hi), (m_lo, m_hi), (w_lo, w_hi), *weight_bounds = rng.bounds
        assert (n_lo, n_hi) == (3, 20) and (m_lo, m_hi) == (2, min(10, n - 1)) and (w_lo, w_hi) == (10, 1000)
        m, w = len(edges) // n, weight_bounds[0][1]
        assert len(weight_bounds) == n * m and set(weight_bounds) == {(1, w)}
        assert 10 <= w <= 1000 and all(1 <= wt <= w for _, _, wt in edges)
        # Node i's edges go to (i+1)%N .. (i+M)%N, in that order, nodes in order.
        assert [(s, t) for s, t, _ in edges] == [(i, (i + k) % n) for i in range(n) for k in range(1, m + 1)]
        ps[p] += 1
        ns[n] += 1
        ms[m] += 1
    assert set(ns) == set(range(3, 21)) and set(ms) == set(range(2, 11))
    assert abs(ps[1] / 10_000 - 0.7) < 0.02 and abs(ps[2] / 10_000 - 0.2) < 0.02 and abs(ps[3] / 10_000 - 0.1) < 0.015


def test_generated_prompts_ask_for_paths_from_0_to_last_node():
    rng = random.Random(1)
    for _ in range(200):
        n, edges, p = random_graph(rng)
        prompt = graph_prompt(n, edges, p)
        assert f"from node 0 to node {n - 1}." in prompt
        assert parse_graph_prompt(prompt) == (n, edges, p)
