"""MMLU answer enforcement: a committed letter is kept, a new one is constrained only when there is none."""

import doctest
import random

import tasks.answer_format
from tasks.answer_format import LETTERS, committed_letter, needs_answer, with_answer
from tasks.fresh_prompts import mmlu_rows
from tasks.scoring import parse_mmlu_answer

# What SmolLM2-135M wrote for dev_test MMLU item 206 (prompt_idx 206, gold D); the old enforcement
# appended "The answer is (C)." to it.
ITEM_206 = "A. Measurement of serum troponin I concentration"


def enforce(text: str, constrained_letter) -> str:
    """The fix-up sequence the server runs: `constrained_letter()` stands for the one-token step."""
    if not needs_answer(text):
        return text
    return with_answer(text, committed_letter(text) or constrained_letter())


def never_called():
    raise AssertionError("the constrained step ran although the model had committed to a letter")


def test_docstring_examples():
    assert doctest.testmod(tasks.answer_format).failed == 0


def test_item_206_keeps_the_models_option():
    assert needs_answer(ITEM_206) and committed_letter(ITEM_206) == "A"
    fixed = enforce(ITEM_206, never_called)
    assert fixed == ITEM_206 + "\nThe answer is (A)."
    assert parse_mmlu_answer(fixed) == "A"


def test_item_206_pattern_on_every_option_of_real_questions():
    """Each option line of 200 real MMLU questions, as the model echoes it, is read as its letter."""
    rows = random.Random(0).sample(mmlu_rows(), 200)
    for _, _, choices, _ in rows:
        for letter, choice in zip(LETTERS, choices):
            for text in (f"{letter}. {choice}", f"{letter}) {choice}\n", f"({letter}) {choice}",
                         f"**{letter}.** {choice}\nIt fits the history best.", f"{letter}.\n\n{choice} is right."):
                if needs_answer(text):  # a choice holding "the answer is ..." or LaTeX is read already
                    assert parse_mmlu_answer(enforce(text, never_called)) == letter, text


def test_a_list_of_several_options_commits_to_none():
    listed = "A. Shunting\nB. Upper endoscopy\nC. Endotracheal intubation\nD. Upper endoscopy"
    assert committed_letter(listed) is None
    assert parse_mmlu_answer(enforce(listed, lambda: "C")) == "C"
    assert committed_letter("A. Incision\n\nA. Incision and drainage") == "A"  # one option, twice


def test_answer_statements_and_the_last_one_wins():
    cases = {
        "The correct answer is: **B**. Aspirin inhibits COX.": "B",
        "Answer: (C)": "C",
        "answer: D.": "D",
        "The best option is (A) because ...": "A",
        "My choice: B": "B",
        "Option A is wrong, so the correct answer is: C.": "C",
        "Answer: A\nOn reflection the correct answer is: D": "D",
        "C. Intubation\nThe correct answer is: B": "B",  # a statement outranks an option line
    }
    for text, letter in cases.items():
        assert committed_letter(text) == letter, text
        assert parse_mmlu_answer(enforce(text, never_called)) == letter, text


def test_no_commitment_is_read_into_ordinary_prose():
    for text in ["The answer is a drug that blocks IL-1.", "Option A is wrong.", "The answer: a-fib",
                 "Vitamin B12 deficiency", "I think it is the second one.", "", "answer: b"]:
        assert committed_letter(text) is None, text


def test_a_text_the_grader_reads_already_is_left_alone():
    for text in ["The answer is (B).", r"So \boxed{D}.", "Dose 5 mg. $C$"]:
        assert not needs_answer(text)
        assert enforce(text, never_called) == text


def test_replay_scores_the_constrained_and_the_committed_letter():
    """`evaluation.enforcement_replay` on item 206 and on a listed-options text, gold D and C."""
    from evaluation.enforcement_replay import replay
    listed = "A. Shunting\nB. Endoscopy\nC. Intubation\nD. Endoscopy"
    raw = [{"task": "mmlu_med", "prompt_idx": 206, "gold": "D", "output": ITEM_206},
           {"task": "mmlu_med", "prompt_idx": 210, "gold": "C", "output": listed},
           {"task": "mmlu_med", "prompt_idx": 211, "gold": "C", "output": "The answer is (C)."}]
    enforced = [{**raw[0], "output": with_answer(ITEM_206, "C")}, {**raw[1], "output": with_answer(listed, "C")},
                raw[2]]
    result = replay(raw, enforced)
    assert {k: result[k] for k in ("items", "fixed_up", "committed", "contradicted", "mismatched")} == \
        {"items": 3, "fixed_up": 2, "committed": 1, "contradicted": 1, "mismatched": 0}
    assert (result["score_without"], result["score_constrained"], result["score_committed_first"]) == \
        (round(1 / 3, 3), round(2 / 3, 3), round(2 / 3, 3))
    assert result["contradictions"][0]["committed"] == "A" and result["contradictions"][0]["constrained"] == "C"
