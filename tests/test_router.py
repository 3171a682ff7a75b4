"""The task router and the templates it relies on.

The templates must rebuild the served course prompts byte for byte. The router must label every
served and freshly generated prompt, survive mangled and chat-wrapped versions of them, send
everything else to "general", and stay fast on any input.
"""

import json
import random
import re
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.fresh_prompts import (DATA_DIR, graph_prompts, infobench_prompts, infobench_rows, mmlu_prompts, mmlu_rows,
                            random_graph)
from tasks.router import LABELS, classify
from tasks.templates import graph_prompt, infobench_prompt, mmlu_prompt


def _load_trace(name: str) -> list[dict]:
    with open(DATA_DIR / "course" / name, encoding="utf-8") as f:
        return json.load(f)


SERVED = {i: p for batch in _load_trace("batch_arrivals.json") for i, p in zip(batch["prompt_idxs"], batch["prompts"])}


def _served_label(idx: int) -> str:
    return "graph" if idx < 100 else "infobench" if idx < 200 else "mmlu_med"


LABELLED = [(SERVED[i], _served_label(i)) for i in sorted(SERVED)]


# ---------------------------------------------------------------- templates rebuild the served prompts

def test_trace_holds_the_300_dev_test_prompts():
    assert sorted(SERVED) == list(range(300))


def test_mmlu_template_rebuilds_served_prompts_from_the_csvs():
    rebuilt = {mmlu_prompt(subject, question, choices) for subject, question, choices, _ in mmlu_rows()}
    assert [i for i in range(200, 300) if SERVED[i] not in rebuilt] == []


def test_infobench_template_rebuilds_served_prompts_from_the_jsonl():
    rows = infobench_rows()
    for i in range(100, 200):
        matching = [r for r in rows if SERVED[i].startswith(f"Instruction: {r['instruction']}\n")]
        assert matching, f"prompt {i}: no InfoBench row has its instruction"
        assert SERVED[i] in [infobench_prompt(r["instruction"], r["input"]) for r in matching], i


def _parse_graph(prompt: str) -> tuple[int, list[tuple[int, int, int]], int]:
    n = int(re.search(r"with (\d+) nodes", prompt)[1])
    p = int(re.search(r"top (\d+) shortest", prompt)[1])
    edges = [tuple(map(int, e)) for e in re.findall(r"^(\d+) -> (\d+), weight: (\d+)$", prompt, re.M)]
    return n, edges, p


def _assert_course_graph(n: int, edges: list[tuple[int, int, int]], p: int, max_weight: int = 1000) -> None:
    """The instance has the shape the course generator gives (see data/README.md)."""
    m = len(edges) // n
    assert 3 <= n <= 20 and 2 <= m <= min(10, n - 1) and p in (1, 2, 3)
    assert [(s, t) for s, t, _ in edges] == [(i, (i + k) % n) for i in range(n) for k in range(1, m + 1)]
    assert all(1 <= w <= max_weight for _, _, w in edges)


def test_graph_template_rebuilds_served_prompts_from_their_edges():
    for i in range(100):
        n, edges, p = _parse_graph(SERVED[i])
        _assert_course_graph(n, edges, p)
        assert graph_prompt(n, edges, p) == SERVED[i], i


def test_graph_template_rebuilds_the_v1_dev_test():
    with open(DATA_DIR / "graphdev" / "dev_test_v1_hw2era.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 100
    for row in rows:
        edges = [tuple(e) for e in row["edges"]]
        _assert_course_graph(row["N"], edges, row["P"])
        assert len(edges) == row["N"] * row["M"]
        assert graph_prompt(row["N"], edges, row["P"]) == row["prompt"]


def test_random_graph_follows_the_course_generator():
    rng = random.Random(0)
    draws = [random_graph(rng) for _ in range(4000)]
    for n, edges, p in draws:
        _assert_course_graph(n, edges, p)
    p_share = Counter(p for _, _, p in draws)
    assert abs(p_share[1] / 4000 - 0.7) < 0.03 and abs(p_share[2] / 4000 - 0.2) < 0.03
    assert {n for n, _, _ in draws} == set(range(3, 21))


def test_generators_are_seeded_and_cover_their_sources():
    assert graph_prompts(5, seed=3) == graph_prompts(5, seed=3) != graph_prompts(5, seed=4)
    assert len(set(mmlu_prompts(508))) == 508
    assert len(set(infobench_prompts(500))) == 500
    assert any("about  high school biology." in p for p in mmlu_prompts(16))


# ---------------------------------------------------------------- the router on real and fresh prompts

def test_router_labels_every_served_prompt():
    assert [i for i, (prompt, label) in enumerate(LABELLED) if classify(prompt) != label] == []


def test_router_labels_the_sample_trace_like_the_full_trace():
    label_of = dict(LABELLED)
    for batch in _load_trace("batch_arrivals_sample.json"):
        for prompt in batch["prompts"]:
            assert classify(prompt) == label_of[prompt]


@pytest.mark.parametrize("task, make", [("graph", graph_prompts), ("mmlu_med", mmlu_prompts),
                                        ("infobench", infobench_prompts)])
def test_router_labels_fresh_prompts(task, make):
    prompts = make(400, seed=11)
    assert [p[:80] for p in prompts if classify(p) != task] == []


# ---------------------------------------------------------------- robustness: mangled versions of real prompts

def _mangle_whitespace(prompt: str, rng: random.Random) -> str:
    """Each run of spaces kept, doubled, dropped or made a tab; line breaks doubled or indented."""
    spaced = re.sub(" +", lambda _: rng.choice([" ", "  ", "", "\t", "   "]), prompt)
    return re.sub("\n", lambda _: rng.choice(["\n", "\n\n", " \n", "\n  ", "\n\t"]), spaced)


CHAT_WRAPS = {
    "chatml_system": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                     "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
    "qwen3_no_think": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
              "December 2023\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama2_system": "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n{} [/INST]",
    "mistral": "<s>[INST] {} [/INST]",
    "gemma": "<bos><start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n",
    "phi3": "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\n{}<|end|>\n<|assistant|>\n",
    "plain": "User: {}\nAssistant:",
    "markdown": "### System:\nBe brief.\n\n### User:\n{}\n\n### Assistant:\n",
}

VARIANTS = {
    "upper": str.upper,
    "lower": str.lower,
    "swapcase": str.swapcase,
    "title": str.title,
    "crlf": lambda p: p.replace("\n", "\r\n"),
    "cr": lambda p: p.replace("\n", "\r"),
    "one_line": lambda p: re.sub(r"\s*\n\s*", " ", p),
    "trailing_note": lambda p: p + "\n\nThink step by step, and keep the answer short.",
    "trailing_essay": lambda p: p + " Some unrelated trailing text." * 300,
    "no_generation_line": lambda p: p.removesuffix("\nGeneration:"),
    "no_question_line": lambda p: p.replace("\nQuestion: \n", "\n"),
    "other_subject": lambda p: re.sub(r"about\s+[a-z ]+\.", "about high school macroeconomics.", p, count=1),
    "other_subject_single_space": lambda p: re.sub(r"about\s+[a-z ]+\.", "about anatomy.", p, count=1),
    "extra_spaces_everywhere": lambda p: p.replace(" ", "   ").replace(":", " :"),
    "no_spaces_at_all": lambda p: p.replace(" ", ""),
    **{f"wrap_{name}": (lambda p, w=wrap: w.format(p)) for name, wrap in CHAT_WRAPS.items()},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_router_survives_variants_of_served_prompts(variant):
    change = VARIANTS[variant]
    assert [i for i, (prompt, label) in enumerate(LABELLED) if classify(change(prompt)) != label] == []


@pytest.mark.parametrize("wrap", sorted(CHAT_WRAPS))
def test_chat_wrapped_infobench_prompt_needs_only_one_of_question_and_generation(wrap):
    """Inside any chat wrap, "Instruction:" still counts as opening the prompt, so one more feature suffices."""
    infobench = [prompt for prompt, label in LABELLED if label == "infobench"]
    for prompt in infobench:
        assert classify(CHAT_WRAPS[wrap].format(prompt.removesuffix("\nGeneration:"))) == "infobench"
        assert classify(CHAT_WRAPS[wrap].format(re.sub(r"\nQuestion: .*\n", "\n", prompt, flags=re.S))) == "infobench"


def test_router_survives_whitespace_mangling():
    rng = random.Random(5)
    for _ in range(3):
        assert [i for i, (prompt, label) in enumerate(LABELLED)
                if classify(_mangle_whitespace(prompt, rng)) != label] == []


def test_router_survives_combined_variants():
    """A chat wrap, then mangled whitespace, a case change, other line endings and trailing text, at random."""
    rng = random.Random(9)
    cases = ["upper", "lower", "title", "swapcase"]
    endings = ["crlf", "cr", "trailing_note", "no_generation_line", "other_subject"]
    wrong = []
    for i, (prompt, label) in enumerate(LABELLED * 2):
        wrapped = CHAT_WRAPS[rng.choice(sorted(CHAT_WRAPS))].format(VARIANTS[rng.choice(endings)](prompt))
        changed = VARIANTS[rng.choice(cases)](_mangle_whitespace(wrapped, rng))
        if classify(changed) != label:
            wrong.append(i)
    assert wrong == []


# ---------------------------------------------------------------- everything else is general

GENERAL_PROMPTS = [
    "",
    "   \n\t  ",
    "What is the capital of France?",
    "Write a haiku about the first snow of winter.",
    "Explain the difference between a directed graph and an undirected graph.",
    "Write a Python function that finds the shortest path in a directed graph using Dijkstra's algorithm.",
    "You are given a directed graph with 3 nodes. Find the shortest path from node 0 to node 2.",
    "Here is my graph:\n0 -> 1, weight: 5\n1 -> 2, weight: 3\nCan you draw it as ASCII art?",
    "Write a story about a directed graph who wanted to find the shortest path home and submit_paths "
    "to her mother.",
    "My sales graph went up this quarter. What's the answer to keeping it growing?",
    "def add(a: int, b: int) -> int:\n    return a + b\n\nWhy does mypy complain about this?",
    "What does the regex `\\d+ -> \\d+, weight: \\d+` match?",
    "Log:\n2024-01-01 12:00:01 -> 12:00:02, weight: 3kg\nWhat happened here?",
    "What is a multiple choice question, and how do I write a good one?",
    "Create a multiple choice question about the heart with four options, and end with "
    "\"The answer is (X)\".",
    "Which of these is a prime number? A. 4 B. 6 C. 7 D. 9",
    "Outline:\nA. Introduction\nB. Methods\nC. Results\nD. Discussion\nPlease expand this into an essay.",
    "Question: What is 2 + 2?\nAnswer:",
    "Solve for x: 2x + 3 = 7. The answer is an integer, right?",
    "Translate into French: the answer is in the question.",
    "Please follow this Instruction: summarise the text below. Question: is it good? Generation: none.",
    "In my essay I answer the question: what is Generation Z like? My teacher's instruction: be brief.",
    "Instruction: Write a limerick about a cat.",
    "User: Instruction: what should I cook tonight?\nAssistant:",
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\nName three primary colours.\n\n### Response:",
    "SELECT name, weight FROM edges WHERE source = 0 ORDER BY weight;",
    "{\"paths\": [[0, 2, 4]], \"weights\": [10]}",
    "submit_paths(paths=[[0, 2, 4]], weights=[10])",
    "请用中文解释一下最短路径算法。",
    "Résumé: 10 ans d'expérience. Objectif : trouver le chemin le plus court vers un CDI.",
    "🙂🙃 " * 50,
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 200,
    "<|im_start|>user\nHello! How are you today?<|im_end|>\n<|im_start|>assistant\n",
    "[INST] Tell me a joke about graphs. [/INST]",
    "The instruction manual says: Instruction: press the red button.\nQuestion: why red?",
]


@pytest.mark.parametrize("prompt", GENERAL_PROMPTS)
def test_other_prompts_are_general(prompt):
    assert classify(prompt) == "general"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_is_general(text):
    assert classify(text) == "general"


# Pieces of the three templates and of chat markup, to stress the patterns with near-misses.
FRAGMENTS = ["Instruction:", "\nInstruction: ", "Question:", "\nGeneration:", "\n", "\r\n", "\r", " ", "\t",
             "0 -> 1, weight: 5\n", "12->3,weight:40", "->", "777", "directed graph", "shortest path",
             "submit_paths", "multiple choice question", " Options:", "\nA. ", "\nB. ", "\nC. ", "\nD. ",
             "The answer is", "\nAnswer:", "<|im_start|>user\n", "<|user|>", "<|", "|>", "[INST]", "<</SYS>>",
             "User:", "### User:\n", "İ", "\x00", "\ud800", "\U0001f600"]
_PIECES = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=80).map("".join)


@settings(max_examples=400, deadline=None)
@given(_PIECES)
def test_template_fragments_never_crash(text):
    assert classify(text) in LABELS


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(LABELLED), st.one_of(st.text(), _PIECES))
def test_trailing_text_keeps_the_label(item, tail):
    prompt, label = item
    assert classify(prompt + tail) == label


# ---------------------------------------------------------------- speed

MB = 1 << 20
_rng = random.Random(0)
ADVERSARIAL = {
    "digits": "7" * MB,
    "spaces": " " * MB,
    "newlines": "\n" * MB,
    "edge_fragments": "0 -> 1, weight: " * (MB // 16),
    "arrows": "1->" * (MB // 3),
    "option_lines": "\nA." * (MB // 3),
    "instructions": "Instruction: " * (MB // 13),
    "markup": "<|" * (MB // 2),
    "template_pieces": "".join(_rng.choice(FRAGMENTS) for _ in range(MB // 4))[:MB],
    "graph_then_padding": SERVED[0] + "x" * MB,
}
# The labels each may get; random template pieces can assemble a real-looking prompt, so any label does there.
ADVERSARIAL_LABELS = {"graph_then_padding": {"graph"}, "template_pieces": set(LABELS)}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_megabyte_prompt_is_fast(name):
    prompt = ADVERSARIAL[name]
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        label = classify(prompt)
        timings.append(time.perf_counter() - start)
    assert label in ADVERSARIAL_LABELS.get(name, {"general"})
    assert min(timings) < 0.1


def test_typical_prompt_takes_well_under_a_millisecond():
    prompts = [prompt for prompt, _ in LABELLED]
    per_prompt = []
    for _ in range(3):
        start = time.perf_counter()
        for prompt in prompts:
            classify(prompt)
        per_prompt.append((time.perf_counter() - start) / len(prompts))
    assert min(per_prompt) < 1e-3
