"""The dev_test eval sets: the served course prompts with their gold.

graphdev = `prompt_idxs` 0-99 of `data/course/batch_arrivals.json` (gold from the exact oracle),
infobench = 100-199 (decomposed questions from `data/infobench/infobench.jsonl`), mmlu_med =
200-299 (gold letter from the MMLU CSVs, matched by rebuilding each row's prompt text).
"""

from __future__ import annotations

import dataclasses
import json

from tasks.fresh_prompts import DATA_DIR, infobench_rows, mmlu_rows
from tasks.graph_oracle import gold_answer, parse_graph_prompt
from tasks.templates import infobench_prompt, mmlu_prompt

TASKS = ("graphdev", "mmlu_med", "infobench")
_IDX_RANGES = {"graphdev": range(0, 100), "infobench": range(100, 200), "mmlu_med": range(200, 300)}


@dataclasses.dataclass(frozen=True)
class Item:
    task: str
    prompt_idx: int
    prompt: str
    gold: object          # graph: {"paths": [...]}; mmlu: "B"; infobench: {"id": ..., "questions": [...]}


def served_prompts() -> dict[int, str]:
    """Every prompt of the 20-minute trace by its `prompt_idx`."""
    trace = json.loads((DATA_DIR / "course" / "batch_arrivals.json").read_text())
    return {i: p for batch in trace for i, p in zip(batch["prompt_idxs"], batch["prompts"])}


def load_items(task: str, limit: int | None = None) -> list[Item]:
    """The first `limit` items of one task (all 100 if None), in `prompt_idx` order."""
    prompts = served_prompts()
    idxs = list(_IDX_RANGES[task])[:limit]
    gold = {"graphdev": _graph_gold, "mmlu_med": _mmlu_gold(), "infobench": _infobench_gold()}[task]
    return [Item(task, i, prompts[i], gold(prompts[i])) for i in idxs]


def _graph_gold(prompt: str) -> dict:
    return gold_answer(*parse_graph_prompt(prompt))


def _mmlu_gold():
    letters = {mmlu_prompt(subject, q, choices): answer for subject, q, choices, answer in mmlu_rows()}
    return lambda prompt: letters[prompt]


def _infobench_gold():
    rows = {infobench_prompt(r["instruction"], r["input"]): r for r in infobench_rows()}

    def gold(prompt: str) -> dict:
        row = rows[prompt]
        return {"id": row["id"], "questions": row["decomposed_questions"]}
    return gold
