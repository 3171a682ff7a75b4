"""The GraphDev verifier: it keeps only the model's valid paths, exact weights, sorted and unique."""

from tasks.graph_verifier import pick_best, rewrite, valid_paths
from tasks.scoring import parse_graph_answer, score_graph
from tasks.templates import graph_prompt

# 0 -> 1 -> 3 costs 3, 0 -> 2 -> 3 costs 5, 0 -> 3 costs 10, 0 -> 1 -> 2 -> 3 costs 1 + 1 + 4 = 6.
EDGES = [(0, 1, 1), (0, 2, 1), (0, 3, 10), (1, 3, 2), (1, 2, 1), (2, 3, 4), (2, 0, 1)]
PROMPT = graph_prompt(4, EDGES, 2)


def test_invalid_edges_and_endpoints_dropped():
    text = "submit_paths(paths=[[0, 3, 1], [0, 1, 3], [1, 3], [0, 2]], weights=[1, 3, 2, 1])"
    assert valid_paths(PROMPT, text) == [([0, 1, 3], 3)]


def test_non_simple_dropped():
    text = "submit_paths(paths=[[0, 2, 0, 1, 3], [0, 2, 3]], weights=[5, 5])"
    assert valid_paths(PROMPT, text) == [([0, 2, 3], 5)]


def test_wrong_weights_recomputed_duplicates_removed_and_sorted():
    text = "submit_paths(paths=[[0, 3], [0, 2, 3], [0, 1, 3], [0, 2, 3]], weights=[1, 2, 3, 4])"
    assert rewrite(PROMPT, text) == "submit_paths(paths=[[0, 1, 3], [0, 2, 3], [0, 3]], weights=[3, 5, 10])"
    assert score_graph(rewrite(PROMPT, text), {"paths": [{"path": [0, 1, 3], "weight": 3},
                                                         {"path": [0, 2, 3], "weight": 5}]}) == 1.0


def test_unparseable_or_empty_answer_left_unchanged():
    for text in ("I do not know", "submit_paths(paths=[[1, 2]], weights=[3])", "submit_paths(paths=[5], weights=[1])"):
        assert rewrite(PROMPT, text) == text
    assert rewrite("not a graph prompt", "submit_paths(paths=[[0, 1]], weights=[1])") \
        == "submit_paths(paths=[[0, 1]], weights=[1])"


def test_rewrite_reads_json_answers_too():
    text = '{"paths": [{"path": [0, 2, 3], "weight": 9}]}'
    assert parse_graph_answer(rewrite(PROMPT, text)) == ([[0, 2, 3]], [5])


def test_best_of_prefers_more_valid_paths_then_lower_weight():
    one = "submit_paths(paths=[[0, 3]], weights=[10])"
    two_heavy = "submit_paths(paths=[[0, 3], [0, 1, 2, 3]], weights=[10, 6])"
    two_light = "submit_paths(paths=[[0, 2, 3], [0, 1, 3]], weights=[0, 0])"
    assert pick_best(PROMPT, [one, two_heavy, two_light]) == 2
    assert pick_best(PROMPT, ["garbage", one]) == 1
    assert pick_best(PROMPT, [one, one]) == 0  # a tie keeps the first
    # Only the top P = 2 count: a third valid path does not beat two cheaper ones.
    three = "submit_paths(paths=[[0, 3], [0, 1, 2, 3], [0, 2, 3]], weights=[1, 1, 1])"
    assert pick_best(PROMPT, [three, two_light]) == 1
