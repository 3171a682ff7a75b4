"""A max_tokens budget read off an InfoBench instruction's own words about length.

Small models ramble until the cap; an instruction that asks for "one sentence" or "a short
title" is better served (and judged) with a small budget. The rule is deliberately simple:
the first matching group, from shortest to longest, sets the budget; no match keeps the
policy's cap. Whole words only, case-insensitive.
"""

from __future__ import annotations

import re

# (words, budget in tokens), checked in this order.
BUDGETS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("one word", "single word", "one sentence", "single sentence", "title", "headline", "slogan",
      "tweet", "one line", "yes or no"), 64),
    (("short", "brief", "briefly", "concise", "summarize", "summarise", "summary", "few words",
      "two sentences", "three sentences", "list"), 192),
    (("essay", "detailed", "in detail", "article", "story", "blog", "report", "paragraphs",
      "explain", "describe"), 512),
)
_PATTERNS = [(re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE), budget)
             for words, budget in BUDGETS]


_INSTRUCTION = re.compile(r"instruction\s*:(.*?)\n\s*question\s*:", re.IGNORECASE | re.DOTALL)


def length_budget(prompt: str) -> int | None:
    """The budget the prompt's instruction calls for, or None if it names no length.

    Only the instruction is read (the text between "Instruction:" and "Question:", or the whole
    prompt if those are missing): the input often quotes a story or a list that asks for nothing.
    """
    found = _INSTRUCTION.search(prompt)
    instruction = found.group(1) if found else prompt
    for pattern, budget in _PATTERNS:
        if pattern.search(instruction):
            return budget
    return None
