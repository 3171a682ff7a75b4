"""Seeded generators of fresh prompts for the three course tasks, built from the data in `data/`.

The course's dev_test set has only 100 prompts per task; these generators make as many more as a
test or benchmark needs, in exactly the served format (see `tasks.templates`).
"""

import csv
import json
import random
from pathlib import Path

from tasks.templates import graph_prompt, infobench_prompt, mmlu_prompt

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# The course serves only the two medicine subjects; the others check that nothing depends on the
# subject name in the MMLU header.
MMLU_SUBJECTS = ("college_medicine", "professional_medicine", "anatomy", "clinical_knowledge",
                 "college_biology", "medical_genetics", "high_school_biology", "virology")


def random_graph(rng: random.Random) -> tuple[int, list[tuple[int, int, int]], int]:
    """One GraphDev instance `(n, edges, p)`, drawn like the course generator.

    N in 3..20; M in 2..min(10, N-1); W in 10..1000; P = 1, 2, 3 with probability 0.7, 0.2, 0.1.
    Node i has edges to (i+1)%N, ..., (i+M)%N in that order, each with a weight uniform in 1..W.
    """
    n = rng.randint(3, 20)
    m = rng.randint(2, min(10, n - 1))
    w = rng.randint(10, 1000)
    p = rng.choices((1, 2, 3), weights=(0.7, 0.2, 0.1))[0]
    edges = [(i, (i + k) % n, rng.randint(1, w)) for i in range(n) for k in range(1, m + 1)]
    return n, edges, p


def graph_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` fresh graph prompts (source node 0, target node N-1)."""
    rng = random.Random(seed)
    return [graph_prompt(*random_graph(rng)) for _ in range(count)]


def mmlu_rows() -> list[tuple[str, str, list[str], str]]:
    """Every MMLU medicine row of every split, as `(subject, question, choices, answer_letter)`."""
    rows = []
    for path in sorted((DATA_DIR / "mmlu_med").glob("*/*.csv")):
        subject = path.stem.rsplit("_", 1)[0]  # "college_medicine_test" -> "college_medicine"
        with open(path, newline="", encoding="utf-8") as f:
            rows.extend((subject, r[0], r[1:5], r[5]) for r in csv.reader(f))
    return rows


def mmlu_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` MMLU prompts from shuffled CSV rows, the subject name rotating through `MMLU_SUBJECTS`."""
    rows = mmlu_rows()
    random.Random(seed).shuffle(rows)
    picked = [rows[i % len(rows)] for i in range(count)]
    return [mmlu_prompt(MMLU_SUBJECTS[i % len(MMLU_SUBJECTS)], question, choices)
            for i, (_, question, choices, _) in enumerate(picked)]


def infobench_rows() -> list[dict]:
    """The 500 InfoBench rows (`id`, `instruction`, `input`, `decomposed_questions`, ...)."""
    with open(DATA_DIR / "infobench" / "infobench.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def infobench_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` InfoBench prompts from shuffled rows (about half have a non-empty input)."""
    rows = infobench_rows()
    random.Random(seed).shuffle(rows)
    picked = [rows[i % len(rows)] for i in range(count)]
    return [infobench_prompt(r["instruction"], r["input"]) for r in picked]
