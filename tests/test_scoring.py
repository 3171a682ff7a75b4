"""The course grader's rules, on hand-made answers that hit each of its quirks.

GraphDev and MMLU go through `tasks.scoring`; InfoBench's judging protocol through
`tasks.infobench_judge` with a scripted fake judge.
"""

import argparse

import pytest

from tasks.infobench_judge import (JUDGE_INSTRUCTION, add_judge_arguments, chat_from_args, first_turn,
                                   item_score, judge_item, parse_verdict, task_score)
from tasks.scoring import boxed_letter, parse_graph_answer, parse_mmlu_answer, score_graph, score_mmlu

GOLD3 = {"paths": [{"path": [0, 2, 4], "weight": 10},
                   {"path": [0, 1, 4], "weight": 12},
                   {"path": [0, 3, 4], "weight": 15}]}
GOLD1 = {"paths": [{"path": [0, 8, 9], "weight": 25}]}


# ---------------------------------------------------------------- GraphDev

def test_graph_function_call_either_argument_order():
    assert score_graph("submit_paths(paths=[[0, 8, 9]], weights=[25])", GOLD1) == 1.0
    assert score_graph("submit_paths(weights=[25], paths=[[0, 8, 9]])", GOLD1) == 1.0
    assert score_graph("I will call\nsubmit_paths( paths = [[0,8,9]] ,\n weights = [25] )\nthanks", GOLD1) == 1.0


def test_graph_first_call_wins():
    text = "submit_paths(paths=[[0, 8, 9]], weights=[25])\nor maybe submit_paths(paths=[[0, 9]], weights=[40])"
    assert parse_graph_answer(text) == ([[0, 8, 9]], [25])
    text = "submit_paths(paths=[[0, 9]], weights=[40])\nno wait: submit_paths(paths=[[0, 8, 9]], weights=[25])"
    assert score_graph(text, GOLD1) == 0.0


def test_graph_paths_first_order_is_tried_before_weights_first():
    """The course searches the whole text for paths= first, so it beats an earlier weights-first call."""
    text = "submit_paths(weights=[25], paths=[[0, 8, 9]])\nsubmit_paths(paths=[[0, 9]], weights=[40])"
    assert parse_graph_answer(text) == ([[0, 9]], [40])


def test_graph_json_form_and_json_inside_prose():
    assert score_graph('{"paths": [{"path": [0, 8, 9], "weight": 25}]}', GOLD1) == 1.0
    prose = 'Here is my answer:\n```json\n{"paths": [\n  {"path": [0, 8, 9], "weight": 25}\n]}\n```\nDone.'
    assert score_graph(prose, GOLD1) == 1.0


def test_graph_json_span_is_greedy_first_to_last_brace():
    # Braces in the prose after the JSON spoil the span; the call is the fallback.
    spoiled = '{"paths": [{"path": [0, 8, 9], "weight": 25}]} (cost {25})'
    assert parse_graph_answer(spoiled) is None
    with_call = spoiled + "\nsubmit_paths(paths=[[0, 9]], weights=[40])"
    assert parse_graph_answer(with_call) == ([[0, 9]], [40])
    # JSON of another shape falls through to the call too.
    assert parse_graph_answer('{"paths": [[0, 8, 9]]}\nsubmit_paths(paths=[[0, 8, 9]], weights=[25])') == \
        ([[0, 8, 9]], [25])
    # A gold-shaped JSON missing a weight fails as a whole.
    assert parse_graph_answer('{"paths": [{"path": [0, 8, 9], "weight": 25}, {"path": [0, 9]}]}') is None


def test_graph_duplicates_count_once():
    text = "submit_paths(paths=[[0, 2, 4], [0, 2, 4], [0, 2, 4]], weights=[10, 10, 10])"
    assert score_graph(text, GOLD3) == pytest.approx(1 / 3)


def test_graph_partial_credit():
    text = "submit_paths(paths=[[0, 2, 4], [0, 3, 4]], weights=[10, 15])"
    assert score_graph(text, GOLD3) == pytest.approx(2 / 3)


def test_graph_wrong_weight_scores_zero_for_that_path():
    text = "submit_paths(paths=[[0, 2, 4], [0, 1, 4], [0, 3, 4]], weights=[10, 13, 15])"
    assert score_graph(text, GOLD3) == pytest.approx(2 / 3)
    assert score_graph("submit_paths(paths=[[0, 8, 9]], weights=[24])", GOLD1) == 0.0
    # Python equality, as in the course: a float weight equal to the cost counts.
    assert score_graph('{"paths": [{"path": [0, 8, 9], "weight": 25.0}]}', GOLD1) == 1.0


def test_graph_extra_paths_beyond_p_not_penalised():
    text = "submit_paths(paths=[[0, 8, 9], [0, 9], [0, 1, 9]], weights=[25, 40, 77])"
    assert score_graph(text, GOLD1) == 1.0


def test_graph_unpaired_path_is_dropped():
    text = "submit_paths(paths=[[0, 9], [0, 8, 9]], weights=[40])"
    assert score_graph(text, GOLD1) == 0.0


def test_graph_arithmetic_in_lists_is_evaluated_like_the_course_eval():
    assert score_graph("submit_paths(paths=[[0, 8, 9]], weights=[10 + 15])", GOLD1) == 1.0
    assert score_graph("submit_paths(paths=[[0, 8, 9]], weights=[50 / 2])", GOLD1) == 1.0


def test_graph_malicious_call_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    payloads = [
        f"submit_paths(paths=[__import__('os').system('touch {marker}')], weights=[25])",
        f"submit_paths(paths=[[0, 8, 9]], weights=[__import__('pathlib').Path('{marker}').touch() or 25])",
        f"submit_paths(weights=[25], paths=[[0, 8, 9], open('{marker}', 'w')])",
        f"submit_paths(paths=__import__('os').system('touch {marker}'), weights=[25])",
        "submit_paths(paths=[[0, 8, 9]], weights=['a' * 10 ** 10])",
    ]
    for text in payloads:
        assert score_graph(text, GOLD1) == 0.0, text
    assert not marker.exists()


def test_graph_unparseable_scores_zero():
    for text in ["", "   ", "The shortest path is 0 -> 8 -> 9 with weight 25.",
                 "submit_paths(paths=[[0, 8, 9]], weights=[25]", "submit_paths(paths=[[0, 8, 9]], weights=[25)",
                 '{"paths": 5}', "submit_paths(paths=[7], weights=[25])",
                 "submit_paths(paths=[[[0], 8, 9]], weights=[25])"]:
        assert score_graph(text, GOLD1) == 0.0, text


# ---------------------------------------------------------------- MMLU

def test_mmlu_answer_forms():
    assert score_mmlu("Reasoning... The answer is (B)", "B") == 1.0
    assert score_mmlu("The answer is B.", "B") == 1.0
    assert score_mmlu("the answer is b", "B") == 1.0  # case-insensitive, upper-cased
    assert score_mmlu("The answer is(B)", "B") == 1.0
    assert score_mmlu("The answer is (B)", "C") == 0.0


def test_mmlu_first_match_wins():
    assert parse_mmlu_answer("The answer is (A). Hmm, no: the answer is (C).") == "A"


def test_mmlu_the_answer_is_probably_reads_p():
    assert parse_mmlu_answer("I think the answer is probably (B).") == "P"
    assert score_mmlu("I think the answer is probably (B).", "B") == 0.0


def test_mmlu_leaked_thinking_is_matched_first():
    text = "<think>If the answer is A then the dose is wrong...</think>\nThe answer is (D)"
    assert parse_mmlu_answer(text) == "A"
    assert score_mmlu(text, "D") == 0.0


def test_mmlu_forms_the_regex_misses():
    # Punctuation between "is" and the letter defeats the regex, and no LaTeX means no fallback.
    assert parse_mmlu_answer("The answer is: B") is None
    assert parse_mmlu_answer("The answer is **B**") is None
    assert score_mmlu("Answer: B", "B") == 0.0


def test_mmlu_boxed_fallback():
    assert score_mmlu(r"So the final choice is \boxed{B}.", "B") == 1.0
    assert score_mmlu(r"Final: $\boxed{ C }$", "C") == 1.0
    assert score_mmlu(r"The answer is $B$", "B") == 1.0  # regex misses "$"; the math span is read
    assert boxed_letter(r"With $x = 5$ we get \boxed{D}") == "D"  # a box beats other math and numbers
    assert boxed_letter(r"The dose is 5 mg, so \boxed{B}.") == "B"
    assert boxed_letter(r"Final answer: \(B\) at 5 mg") is None  # math_verify takes the number here
    for text in [r"\boxed{b}", r"\boxed{(B)}", r"\boxed{\text{B}}", r"\boxed{B. Aspirin}", r"\boxed{B} or \boxed{C}",
                 r"$B$ and $C$", "B", r"\boxed{B"]:
        assert boxed_letter(text) is None, text
    # The regex comes first: a boxed letter after a matched "the answer is" does not count.
    assert parse_mmlu_answer(r"the answer is probably \boxed{B}") == "P"


# ---------------------------------------------------------------- InfoBench judge

@pytest.mark.parametrize("reply, verdict", [
    ("YES", True), ("yes, it does.", True), ("  Yes", True), ("No.", False), ("NO", False), ("Nope", False),
    ("The text fully complies, so YES.", True), ("Answer: NO", False),
    ("It is NOT compliant", False),  # "NOT" contains "NO"
    ("YES and NO", True), ("Both YES and NO apply", None), ("I cannot tell.", None), ("", None),
    ("The answer is yes", None),
])
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) is verdict


def test_first_turn_layout():
    with_input = first_turn("Paris.", "Is it a city?", input="France's capital?")
    assert with_input == (f'{JUDGE_INSTRUCTION}\n\nInput:\n"France\'s capital?"\n\n'
                          f'Generated Text:\n"Paris."\n\nQuestion:\nIs it a city?\n')
    no_input = f'{JUDGE_INSTRUCTION}\n\nGenerated Text:\n"Paris."\n\nQuestion:\nIs it a city?\n'
    assert first_turn("Paris.", "Is it a city?") == no_input
    for rule in ("YES", "NO", "minor inaccuracy", "no information"):
        assert rule.lower() in JUDGE_INSTRUCTION.lower().replace("small inaccuracy", "minor inaccuracy")


class FakeJudge:
    """Replies from a script and records the messages it was sent."""

    def __init__(self, replies):
        self.replies, self.seen = list(replies), []

    def __call__(self, messages):
        self.seen.append(messages)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_judge_runs_one_growing_chat_per_item():
    judge = FakeJudge(["YES", "No, it has four.", "Yes."])
    questions = ["Is it a list?", "Does it have three items?", "Is it in English?"]
    verdicts = judge_item(judge, "apple, pear, fig, plum", questions, input="fruits")
    assert verdicts == [True, False, True] and item_score(verdicts) == pytest.approx(2 / 3)
    assert [len(m) for m in judge.seen] == [1, 3, 5]
    first, last = judge.seen[0][0], judge.seen[2]
    assert first == {"role": "user", "content": first_turn("apple, pear, fig, plum", questions[0], "fruits")}
    assert last == [first, {"role": "assistant", "content": "YES"},
                    {"role": "user", "content": "Does it have three items?\n"},
                    {"role": "assistant", "content": "No, it has four."},
                    {"role": "user", "content": "Is it in English?\n"}]


def test_judge_unreadable_reply_ends_the_item():
    judge = FakeJudge(["YES", "Hard to say.", "YES"])
    verdicts = judge_item(judge, "text", ["q1", "q2", "q3"])
    assert verdicts == [True, None, None] and len(judge.seen) == 2
    assert item_score(verdicts) == pytest.approx(1 / 3)  # the skipped questions count as not-YES


def test_judge_failure_ends_the_item_and_empty_output_is_not_judged():
    judge = FakeJudge(["YES", RuntimeError("endpoint down")])
    assert judge_item(judge, "text", ["q1", "q2", "q3"]) == [True, None, None]
    judge = FakeJudge([])
    assert judge_item(judge, "", ["q1", "q2"]) == [None, None] and judge.seen == []


def test_task_score_is_the_mean_over_items():
    assert task_score([1.0, 0.5, 0.0, 0.5]) == pytest.approx(0.5)
    assert task_score([]) == 0.0 and item_score([]) == 0.0


def test_judge_arguments(monkeypatch):
    parser = argparse.ArgumentParser()
    add_judge_arguments(parser)
    args = parser.parse_args(["--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "m"])
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert callable(chat_from_args(args))
    with pytest.raises(ValueError):
        chat_from_args(parser.parse_args([]))
