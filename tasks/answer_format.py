"""MMLU answer-format enforcement: make sure the returned text ends with a parseable letter.

When the model's finished answer has no letter the course grader can read (`needs_answer`), the
server appends "The answer is (X)." (`with_answer`) with:

1. the letter the model already committed to, if its text shows one (`committed_letter`), so
   the fix-up never contradicts the model; otherwise
2. a letter the model picks now: the server continues the conversation with `ANSWER_CUE`
   (`continuation_prompt`) and generates exactly one token among the option letters A-D
   (`letter_token_ids`), greedily.
"""

from __future__ import annotations

import re

from tasks.scoring import parse_mmlu_answer

LETTERS = "ABCD"
ANSWER_CUE = "\nThe answer is ("

# "answer: B", "The correct answer is (B)", "best option is **B**", "choice: B." (the letter in
# capitals and standing alone, so "the answer is a drug" or "Option A is wrong" do not count).
_STATEMENT = re.compile(
    r"\b(?i:answer|option|choice)(?:\s+(?i:is)\b\s*:?|\s*:)\s*(?:\*\*)?\(?([A-D])\)?(?:\*\*)?(?![\w-])")
# A line that starts with an option letter, as the prompt lists them: "A. Aspirin", "(B) ...",
# "C) ...", "**D.** ...", or the letter alone.
_OPTION_LINE = re.compile(r"^\s*(?:\*\*)?(?:\(([A-D])\)|([A-D])[.)]|([A-D])(?=\s*$))", re.MULTILINE)


def needs_answer(text: str) -> bool:
    """True if the grader reads no letter from `text`."""
    return parse_mmlu_answer(text) is None


def committed_letter(text: str) -> str | None:
    r"""The option letter the model's own text already commits to, or None if it commits to none.

    In order:
    1. the last answer statement: "answer", "option" or "choice", then "is" or ":", then a
       capital A-D standing alone, in parentheses or bold;
    2. otherwise the letter of the option lines (lines starting "X.", "X)", "(X)" or the letter
       alone), if they all name the same letter; a model that lists several options has not
       picked one.

    >>> committed_letter("A. Measurement of serum troponin I concentration")  # dev_test item 206
    'A'
    >>> committed_letter("The correct answer is: **B**. Aspirin inhibits COX.")
    'B'
    >>> committed_letter("Option A is wrong since ... so the best choice is (D).")
    'D'
    >>> committed_letter("(C)\n\nThe patient most likely has sarcoidosis.")
    'C'
    >>> committed_letter("A. Shunting\nB. Endoscopy\nC. Intubation\nD. Endoscopy") is None  # a list
    True
    >>> committed_letter("The answer is a drug that blocks IL-1.") is None
    True
    """
    statements = _STATEMENT.findall(text)
    if statements:
        return statements[-1]
    options = {next(g for g in groups if g) for groups in _OPTION_LINE.findall(text)}
    return options.pop() if len(options) == 1 else None


def letter_token_ids(tokenizer) -> list[int]:
    """The token id of each letter A-D as it follows "(" (in some vocabularies "A" and " A" differ).

    Encodes "(X" and takes what follows the encoding of "("; raises ValueError if a letter is not
    one token there, since the constrained step generates a single token.
    """
    opening = tokenizer.encode("(", add_special_tokens=False)
    ids = []
    for letter in LETTERS:
        both = tokenizer.encode("(" + letter, add_special_tokens=False)
        if both[:len(opening)] != opening or len(both) != len(opening) + 1:
            raise ValueError(f"the tokenizer does not encode {letter!r} after '(' as one token")
        ids.append(both[-1])
    return ids


def continuation_prompt(engine_prompt: str, text: str) -> str:
    """The prompt of the constrained step: the original prompt, the model's answer, then the cue."""
    return engine_prompt + text + ANSWER_CUE


def with_answer(text: str, letter: str) -> str:
    """`text` with the enforced answer sentence appended on its own line."""
    separator = "\n" if text and not text.endswith("\n") else ""
    return f"{text}{separator}The answer is ({letter})."
