"""The three course prompt templates, byte-for-byte as the load test serves them.

Every space and newline matters: the served prompts are compared against these in
`tests/test_router.py`, and a server that rebuilds or recognises prompts relies on them.
"""

_GRAPH_HEAD = (
    "You are given a directed graph with {n} nodes (numbered 0 to {last}) and the following edges:\n"
    "\n"
    "Edges (source -> target, weight):\n"
)
_GRAPH_TAIL = (
    "\n"
    "Find the top {p} shortest path{plural} from node 0 to node {last}.\n"
    "\n"
    "Return your answer by calling the submit_paths function with:\n"
    "- paths: A list of paths, where each path is a list of node indices\n"
    "- weights: A list of corresponding path weights\n"
    "\n"
    "For example, if the shortest path is [0, 2, 4] with weight 10, call:\n"
    "submit_paths(paths=[[0, 2, 4]], weights=[10])\n"
)

# The header has two spaces before the subject (see `_mmlu_subject`) and two after the period.
_MMLU = (
    "The following is a multiple choice question (with answers) about {subject}.  "
    'Output the answer in the format of "The answer is (X)" at the end.\n'
    "\n"
    "Question: {question}\n"
    " Options:\n"
    "A. {c[0]}\n"
    "B. {c[1]}\n"
    "C. {c[2]}\n"
    "D. {c[3]}\n"
    "Answer:"
)

_INFOBENCH = "Instruction: {instruction}\nQuestion: {input}\nGeneration:"


def graph_prompt(n: int, edges: list[tuple[int, int, int]], p: int) -> str:
    """The GraphDev prompt: find the top `p` shortest paths from node 0 to node `n - 1`.

    `edges` are `(source, target, weight)` triples, listed one per line in the given order.
    """
    lines = "".join(f"{s} -> {t}, weight: {w}\n" for s, t, w in edges)
    return (_GRAPH_HEAD.format(n=n, last=n - 1) + lines
            + _GRAPH_TAIL.format(p=p, plural="s" if p > 1 else "", last=n - 1))


def _mmlu_subject(subject: str) -> str:
    """MMLU's own subject formatting: each `_`-separated word gets a leading space.

    So "college_medicine" becomes " college medicine", which after the template's "about "
    gives the served double space.
    """
    return "".join(" " + word for word in subject.split("_"))


def mmlu_prompt(subject: str, question: str, choices: list[str]) -> str:
    """The MMLU prompt for one question; `subject` is the MMLU subset name, e.g. "college_medicine"."""
    if len(choices) != 4:
        raise ValueError(f"MMLU questions have 4 choices, got {len(choices)}")
    return _MMLU.format(subject=_mmlu_subject(subject), question=question, c=choices)


def infobench_prompt(instruction: str, input: str) -> str:
    """The InfoBench prompt; `input` is the row's context and is often the empty string."""
    return _INFOBENCH.format(instruction=instruction, input=input)
