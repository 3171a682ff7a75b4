"""Which course task a prompt belongs to: "graph", "mmlu_med", "infobench" or "general".

Requests arrive without a task label, so the server reads it off the prompt. The templates are
rigid (see `tasks.templates`), but the router should not be: it scores a few distinctive
features of each template and tolerates changed spacing, case, line endings, trailing text, a
different MMLU subject, a missing "Generation:" line, any graph size, and chat-template wrapping.

Reading the prompt
    Only the first 32 KiB and the last 4 KiB are read: course prompts are under 6 KB, and the
    window bounds the cost of a huge prompt. The text is lower-cased, CR and CRLF become LF, and
    chat-template markup (`<|im_start|>`, `<|user|>`, `<|start_header_id|>`, `[INST]`,
    `<start_of_turn>`, `<s>`, ...) becomes a line break; a marker that opens the user's text
    itself (`<|user|>`, `[INST]`, Llama 2's `<</SYS>>`) becomes the line "user". A chat-wrapped
    prompt then reads like the bare one, its user turn opening after a line that names the role.
    Wherever a template has a space, any whitespace or none is accepted.

Features and points
    graph, needs 4 of 5:
        2  two or more edges "<int> -> <int>, weight: <int>"
        1  "directed graph"
        1  "shortest path"
        1  "submit_paths"
    mmlu_med, needs 4 of 6:
        2  "multiple choice question"
        1  options A., B., C., D. (or "A)"), each opening a line, in that order
        1  "options:"
        1  "the answer is"
        1  a line opening with "answer:"
    infobench, needs 3 of 4:
        2  "instruction:" opening the prompt or a user turn (1 if it merely opens a line;
           inside a line it does not count, and the task scores 0); the best placed of the
           first three occurrences counts, and the two features below must follow it
        1  "question:" after it
        1  "generation:" after it

A task is a candidate when it reaches its threshold. If several are, the one whose first matched
feature comes earliest wins: an outer template encloses an inner one, as when an InfoBench input
quotes an MMLU question. With no candidate the prompt is "general".

Cost
    Besides the window, every pattern runs in linear time (possessive quantifiers, no nested
    repetition) and most start with a literal, which the regex engine scans for quickly. A
    typical prompt takes tens of microseconds, a 1 MB one a few milliseconds.
"""

import re

TASKS = ("graph", "mmlu_med", "infobench")
LABELS = TASKS + ("general",)

_HEAD_CHARS = 32 * 1024
_TAIL_CHARS = 4 * 1024

_CHAT_MARKUP = re.compile(r"<\|[^<>|\n]{0,40}\|>|<(?:start|end)_of_turn>|\[/?inst\]|<</?sys>>|</?s>")
_ROLES = frozenset({"user", "human"})
# Llama 2 puts the system prompt inside the user turn: the user's own text follows "<</SYS>>".
_USER_TURN_MARKERS = frozenset({"[inst]", "<</sys>>"})

# The normalised text starts with "\n", so "\n" before a feature means "opening a line".
_EDGE = re.compile(r"\d\s*+->\s*+\d++\s*+,?\s*+weight\s*+:?\s*+\d")
_DIRECTED = re.compile(r"directed\s*+graph")
_SHORTEST = re.compile(r"shortest\s*+path")
_SUBMIT = re.compile(r"submit[\s_]*+paths")

_MULTIPLE_CHOICE = re.compile(r"multiple[\s-]*+choice\s*+question")
_OPTION_LINE = re.compile(r"\n[ \t]*+\(?([a-d])[ \t]*+[.)]")
_OPTIONS = re.compile(r"options\s*+:")
_ANSWER_IS = re.compile(r"the\s*+answer\s*+is")
_ANSWER_LINE = re.compile(r"\n[ \t]*+answer\s*+:")

_INSTRUCTION = re.compile(r"instruction\s*+:")
_QUESTION = re.compile(r"question\s*+:")
_GENERATION = re.compile(r"generation\s*+:")
# Only the first few "instruction:" are placed, so a prompt repeating it costs little.
_INSTRUCTIONS_PLACED = 3

_THRESHOLDS = {"graph": 4, "mmlu_med": 4, "infobench": 3}
_NOWHERE = 1 << 62  # the anchor of a task with no feature found: after any position in a prompt


def classify(prompt: str) -> str:
    """The task of `prompt`: one of "graph", "mmlu_med", "infobench" or "general".

    Never raises on a str, and its cost is bounded whatever the length; the rules are in the
    module docstring.
    """
    text = _normalise(prompt)
    best_task, best_anchor = "general", _NOWHERE
    for task, score in (("graph", _graph), ("mmlu_med", _mmlu), ("infobench", _infobench)):
        points, anchor = score(text)
        if points >= _THRESHOLDS[task] and anchor < best_anchor:
            best_task, best_anchor = task, anchor
    return best_task


def _normalise(prompt: str) -> str:
    """The window, lower-cased, with LF line endings and chat markup unwrapped, after a "\n"."""
    if len(prompt) > _HEAD_CHARS + _TAIL_CHARS:
        prompt = prompt[:_HEAD_CHARS] + "\n" + prompt[-_TAIL_CHARS:]
    text = prompt.lower().replace("\r\n", "\n").replace("\r", "\n")
    return "\n" + _CHAT_MARKUP.sub(_unwrap_marker, text)


def _unwrap_marker(marker: re.Match) -> str:
    token = marker.group()
    opens_user_turn = token in _USER_TURN_MARKERS or any(role in token for role in _ROLES)
    return "\nuser\n" if opens_user_turn else "\n"


def _found(matches: list[re.Match | None]) -> tuple[int, int]:
    """How many of `matches` hit, and where the earliest one starts (`_NOWHERE` if none)."""
    hits = [m.start() for m in matches if m is not None]
    return len(hits), min(hits, default=_NOWHERE)


def _graph(text: str) -> tuple[int, int]:
    edges = _EDGE.finditer(text)
    first_edge, second_edge = next(edges, None), next(edges, None)
    hits, anchor = _found([first_edge, _DIRECTED.search(text), _SHORTEST.search(text), _SUBMIT.search(text)])
    return hits + (second_edge is not None), anchor


def _mmlu(text: str) -> tuple[int, int]:
    header = _MULTIPLE_CHOICE.search(text)
    hits, anchor = _found([header, _options_in_order(text), _OPTIONS.search(text),
                           _ANSWER_IS.search(text), _ANSWER_LINE.search(text)])
    return hits + (header is not None), anchor


def _options_in_order(text: str) -> re.Match | None:
    """The "A." line of an A., B., C., D. sequence of option lines, or None if there is none.

    Taking each letter at its first line after the previous letter finds a sequence if any exists.
    """
    first, expected = None, "a"
    for option in _OPTION_LINE.finditer(text):
        if option.group(1) == expected:
            first = first or option
            if expected == "d":
                return first
            expected = chr(ord(expected) + 1)
    return None


def _infobench(text: str) -> tuple[int, int]:
    best, anchor = 0, None
    for i, found in enumerate(_INSTRUCTION.finditer(text)):
        if i == _INSTRUCTIONS_PLACED:
            break
        place = _placement(text, found.start())
        if place > best:
            best, anchor = place, found
    if anchor is None:
        return 0, _NOWHERE
    after = anchor.end()
    points = best + (_QUESTION.search(text, after) is not None) + (_GENERATION.search(text, after) is not None)
    return points, anchor.start()


def _placement(text: str, pos: int) -> int:
    """2 if `pos` opens the text or a user turn, 1 if it only opens a line, 0 if it is inside a line.

    A user turn opens after a line naming the role ("user", "Human:", "### User") or after such a
    prefix on the same line ("User: Instruction: ...").
    """
    window_start = max(0, pos - 200)
    lines = text[window_start:pos].split("\n")
    own_line = _bare(lines[-1])
    if own_line:
        return 2 if own_line in _ROLES else 0
    earlier = [line for line in map(_bare, lines[:-1]) if line]
    if not earlier:
        return 2 if window_start == 0 else 1
    return 2 if earlier[-1] in _ROLES else 1


def _bare(line: str) -> str:
    """A line without surrounding whitespace and markdown or label punctuation ("### User:" -> "user")."""
    return line.strip().strip("#*:").strip()
