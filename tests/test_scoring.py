"""The course grader's rules, on hand-made answers that hit each of its quirks and on generated
variants whose expected scores follow from its rules.

GraphDev and MMLU go through `tasks.scoring`; InfoBench's judging protocol through
`tasks.infobench_judge` with a scripted fake judge. (`python -m evaluation.grader_agreement`
checks the same functions against the course grader's own code paths; see EVAL.md.)
"""

import argparse
import doctest
import hashlib
import itertools
import random
import time
import tracemalloc

import pytest

import tasks.mmlu_fallback
from tasks.fresh_prompts import random_graph
from tasks.graph_oracle import gold_answer
from tasks.infobench_judge import (
    JUDGE_INSTRUCTION,
    add_judge_arguments,
    chat_from_args,
    first_turn,
    item_score,
    judge_item,
    parse_verdict,
    task_score,
)
from tasks.mmlu_fallback import fallback_letter
from tasks.scoring import parse_graph_answer, parse_mmlu_answer, score_graph, score_mmlu

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


def _as_expression(rng: random.Random, xs: list[int]) -> str:
    """A Python expression the course's `eval` turns into a sequence with the items of `xs`.

    None has "])" inside: the course's lazy pattern would end the call there (tested below).
    """
    body = ", ".join(map(str, xs))
    forms = [f"[{body}]", f"({body},)", f"list(({body},))", f"[{xs[0]}] + [{', '.join(map(str, xs[1:]))}]",
             f"[*[{body}]]", f"sorted([{', '.join(map(str, sorted(xs, reverse=True)))}], reverse={xs != sorted(xs)})"
             if xs in (sorted(xs), sorted(xs, reverse=True)) else f"[{body}] * 1"]
    if len(xs) > 1 and len({b - a for a, b in itertools.pairwise(xs)}) == 1 and xs[1] != xs[0]:
        step = xs[1] - xs[0]
        forms += [f"list(range({xs[0]}, {xs[-1] + step}, {step}))", f"range({xs[0]}, {xs[-1] + step}, {step})"]
    return rng.choice(forms)


def _weight_expression(rng: random.Random, w: int) -> str:
    """A Python expression whose value equals `w` (Python equality: 25.0 == 25)."""
    a = rng.randint(0, w)
    return rng.choice([f"{w}", f"{w}.0", f"int({w})", f"float({w})", f"{w}*1**1", f"{a} + {w - a}", f"-(-{w})",
                       f"2*{w}/2", f"sum(({a}, {w - a}))", f"abs(-{w})", f"{w}//1", f"max({w}, {a})", f"{w}**1"])


def graph_variants(count: int, seed: int = 0):
    """(text, gold, expected score) for `count` answers to fresh instances, as the course would score them.

    Each answer is one `submit_paths` call whose lists are Python expressions; an edit decides the
    expected score by the grader's rules: a wrong weight loses that path, a missing path loses
    it, extra paths and duplicates cost nothing, the argument order does not matter.
    """
    rng = random.Random(seed)
    for _ in range(count):
        n, edges, p = random_graph(rng)
        gold = gold_answer(n, edges, p)
        pairs = [(g["path"], g["weight"]) for g in gold["paths"]]
        edit = rng.choice(["none", "wrong weight", "drop last", "extra", "duplicate"])
        expected = 1.0
        if edit == "wrong weight":
            pairs[0] = (pairs[0][0], pairs[0][1] + 1)
            expected = (len(pairs) - 1) / len(pairs)
        elif edit == "drop last":
            expected = (len(pairs) - 1) / len(pairs)
            pairs = pairs[:-1]
        elif edit == "extra":
            pairs.append(([0, n - 1], 10 ** 6))
        elif edit == "duplicate":
            pairs.append(pairs[0])
        rng.shuffle(pairs)
        paths = [_as_expression(rng, path) for path, _ in pairs]
        weights = [_weight_expression(rng, w) for _, w in pairs]
        if rng.random() < 0.5:  # concatenated one-element lists: `[[0, 2]] + [[0, 2, 4]]`
            paths_src = " + ".join(f"[{x}]" for x in paths)
            weights_src = " + ".join(f"[{x}]" for x in weights) + " + []"
        else:
            paths_src, weights_src = f"[{', '.join(paths)}]", f"[{', '.join(weights)}]"
        if not pairs:
            paths_src, weights_src = "[]", "[]"
        call = rng.choice([f"submit_paths(paths={paths_src}, weights={weights_src})",
                           f"submit_paths(weights={weights_src},\n  paths={paths_src})"])
        yield f"The top paths are:\n{call}\n", gold, expected


def test_graph_expression_variants_score_as_the_course_eval():
    """500 generated answers whose lists are expressions (`+`, calls, `*`, `**`, ranges), scored by rule."""
    for text, gold, expected in graph_variants(500):
        assert score_graph(text, gold) == pytest.approx(expected), text


def test_graph_issue_examples():
    gold = {"paths": [{"path": [0, 2], "weight": 725}, {"path": [0, 2, 4], "weight": 730}]}
    assert score_graph("submit_paths(paths=[[0, 2]] + [[0, 2, 4]], weights=[725] + [730])", gold) == 1.0
    assert score_graph("submit_paths(paths=[[0, 2], list(range(0, 5, 2))], weights=[int(725), 730*1**1])",
                       gold) == 1.0
    assert score_graph("submit_paths(paths=[[0, 2]], weights=[725] + [])", gold) == 0.5


def test_graph_bracket_then_parenthesis_ends_the_call():
    """The course's lazy `(\\[.*?\\])\\s*\\)` stops at the first "])": the list is cut and fails to evaluate."""
    assert score_graph("submit_paths(paths=[[0, 8, 9]], weights=[sum([10, 15])])", GOLD1) == 0.0
    assert score_graph("submit_paths(paths=[[0, 8, 9]], weights=[sum((10, 15))])", GOLD1) == 1.0
    assert score_graph("submit_paths(weights=[25], paths=[list([0, 8, 9])])", GOLD1) == 0.0


def test_graph_failed_evaluation_moves_on_to_the_other_argument_order():
    """eval raising (NameError here, MemoryError for `[0] * 10**12`) makes the course try weights-first."""
    for bad in ("[x]", "[0] * 10**12", "[1] - [1]", "[open('f')]"):
        text = f"submit_paths(paths=[[0, 8, 9]], weights={bad})\nsubmit_paths(weights=[25], paths=[[0, 8, 9]])"
        assert score_graph(text, GOLD1) == 1.0, bad
    # A list that evaluates but scores nothing stops the search: no other call is read.
    text = "submit_paths(paths=[[0, 8]], weights=[25])\nsubmit_paths(weights=[25], paths=[[0, 8, 9]])"
    assert score_graph(text, GOLD1) == 0.0


HOSTILE = ["[0] * 10**12", "[10**10**10]", "[9**9**9**9]", "[2**100000]", "['a' * 10**10]", "[[0] * 1000] * 1000",
           "[[0] * 100] * 100 * 100", "[range(10**12)]", "[list(range(10**9))]", "[sum([[0]] * 99999, [])]",
           "[" * 150 + "]" * 150, "[" * 5000 + "]" * 5000, "[" + "+".join(["1"] * 200000) + "]",
           "[" + "+".join(["1"] * 24000) + "]",
           "[" + ", ".join(["[0] * 9"] * 5000) + "]",
           "[" + " + ".join(["[0] * 90000"] * 50) + "]", "[len([0] * 99999)" + " + len([0] * 99999)" * 20 + "]",
           "[(-3) ** (10 ** 20)]", "[int('9' * 4000)]", "[sorted(range(10**8))]", "[[*range(10**9)]]",
           "[(1.5) ** 10**6]", "[10**4000 * 10**4000]"]


@pytest.mark.parametrize("expression", HOSTILE, ids=range(len(HOSTILE)))
def test_graph_hostile_expression_is_bounded_in_time_and_memory(expression):
    """Each hostile argument fails fast in little memory, as if eval had raised, in either position."""
    for text in (f"submit_paths(paths=[[0, 8, 9]], weights={expression})",
                 f"submit_paths(paths={expression}, weights=[25])"):
        tracemalloc.start()
        start = time.monotonic()
        score = score_graph(text, GOLD1)
        elapsed = time.monotonic() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert score == 0.0
        assert elapsed < 2.0, f"{elapsed:.2f} s"
        assert peak < 64 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB"


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


def test_mmlu_math_fallback_cases():
    assert score_mmlu(r"So the final choice is \boxed{B}.", "B") == 1.0
    assert score_mmlu(r"Final: $\boxed{ C }$", "C") == 1.0
    assert score_mmlu(r"The answer is $B$", "B") == 1.0  # the regex misses "$"; the math span is read
    assert fallback_letter(r"With $x = 5$ we get \boxed{D}") == "D"  # a box outranks spans and numbers
    assert fallback_letter(r"The dose is 5 mg, so \boxed{B}.") == "B"
    assert fallback_letter(r"Final answer: \(B\) at 5 mg") is None  # "answer:" ranks both; "5" ends last
    assert fallback_letter(r"The final answer is $B$. I hope it is correct.") == "B"
    assert fallback_letter(r"\boxed{A} is wrong. The right one is \boxed{C}") == "C"  # far apart: the last box
    assert fallback_letter(r"\boxed{A} is wrong; \boxed{C}") is None  # close, with ";" between: "A,C"
    assert fallback_letter("Costs $100 a dose: $B$") is None  # "$100 a dose: $" is the last span
    for text in [r"\boxed{b}", r"\boxed{(B)}", r"\boxed{\text{B}}", r"\boxed{B. Aspirin}", r"\boxed{B} or \boxed{C}",
                 r"$B$ and $C$", "B", r"\boxed{B", "**B**", "(B)", r"$\mathrm{B}$", "Answer: B", r"\fbox{B}"]:
        assert fallback_letter(text) is None, text
    # The regex comes first: a boxed letter after a matched "the answer is" does not count.
    assert parse_mmlu_answer(r"the answer is probably \boxed{B}") == "P"


def test_mmlu_fallback_docstring_examples():
    assert doctest.testmod(tasks.mmlu_fallback).failed == 0


def test_mmlu_issue_examples_take_the_last_math_span():
    assert score_mmlu("Dose 5 mg. $D$", "D") == 1.0
    assert score_mmlu("A 45-year-old man. So $B$", "B") == 1.0
    assert score_mmlu("$B$ for a 45-year-old man", "B") == 0.0


# (wrapper, rank) of a letter in math: a box ranks above every number, a span only level with one.
_SPANS = [("$X$", "span"), ("$$X$$", "span"), (r"\(X\)", "span"), (r"\[X\]", "span"), ("I choose [X] here", "span"),
          (r"$X \text{ (the drug)}$", "span"), (r"$'X'$", "span"), (r"\boxed{X}", "box"), (r"$\boxed{X}$", "box"),
          (r"\boxed{ X }.", "box")]
_BEFORE = ["", "Dose 5 mg. ", "A 45-year-old man. So ", "Costs 100 dollars: ", "x = 3, so ", "Vitamin B12. "]
_AFTER = [("", False), (" at 5 mg.", True), (" for a 45-year-old.", True), (" (see 2 studies)", True),
          (" (5 mg)", False),
          ("\n\nIt is correct.", False), (" Total = 3.", True), (" 10%", True)]


def mmlu_variants():
    """(text, letter the course reads) for every letter-in-math answer between a preamble and an ending.

    By the rules in `tasks.mmlu_fallback`: numbers before the letter never matter; a number that
    ends after a span (one that follows whitespace or "=") takes its place, unless the letter is
    boxed. In "(5 mg)" the number follows "(", so it is none.
    """
    for (wrapper, rank), before, (after, number_after), letter in itertools.product(_SPANS, _BEFORE, _AFTER, "ABCD"):
        read = None if number_after and rank == "span" else letter
        yield before + wrapper.replace("X", letter) + after, read


def test_mmlu_generated_variants_follow_the_course_rule_order():
    """1,920 generated answers: the letter read is the one the rule order gives."""
    variants = list(mmlu_variants())
    assert len(variants) == 1920
    for text, read in variants:
        assert parse_mmlu_answer(text) == read, text
        for gold in "ABCD":
            assert score_mmlu(text, gold) == (1.0 if gold == read else 0.0), (text, gold)


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


# The course's SYS_MSG (grader.py at neubig/lminference-fall2025-code@fb3b319): its length and SHA-256.
COURSE_SYS_MSG_SHA256 = "bd3de53394adcf4de34958a53a4e0d93d10b339c51fbe5ede3c3441932e776c0"


def test_judge_instruction_is_the_course_text_byte_for_byte():
    assert len(JUDGE_INSTRUCTION) == 1104
    assert hashlib.sha256(JUDGE_INSTRUCTION.encode()).hexdigest() == COURSE_SYS_MSG_SHA256
    assert JUDGE_INSTRUCTION.startswith("Based on the provided Input (if any) and Generated Text, answer the ensuing")
    assert JUDGE_INSTRUCTION.endswith("Consequently, the answer should be 'NO'.''")


def test_first_turn_is_the_course_layout_without_an_input_block():
    turn = first_turn("Paris.", "Is it a city?")
    assert turn == JUDGE_INSTRUCTION + '\n\nGenerated Text:\n"Paris."\n\nQuestion:\nIs it a city?\n'
    assert "Input:" not in turn.replace(JUDGE_INSTRUCTION, "")


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
    verdicts = judge_item(judge, "apple, pear, fig, plum", questions)
    assert verdicts == [True, False, True] and item_score(verdicts) == pytest.approx(2 / 3)
    assert [len(m) for m in judge.seen] == [1, 3, 5]
    first, last = judge.seen[0][0], judge.seen[2]
    assert first == {"role": "user", "content": first_turn("apple, pear, fig, plum", questions[0])}
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
