"""MMLU answer-format enforcement: make sure the returned text ends with a parseable letter.

When the model's finished answer has no "The answer is (X)" the course grader can read
(`tasks.scoring.parse_mmlu_answer`), the server continues the conversation with
`ANSWER_CUE` and lets the model pick exactly one token among the option letters A-D, greedily;
the letter is then appended to the returned text as "The answer is (X).".
"""

from __future__ import annotations

from tasks.scoring import parse_mmlu_answer

LETTERS = "ABCD"
ANSWER_CUE = "\nThe answer is ("


def needs_answer(text: str) -> bool:
    """True if the grader reads no letter from `text`."""
    return parse_mmlu_answer(text) is None


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
