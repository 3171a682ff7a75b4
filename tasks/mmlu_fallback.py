r"""The letter the course's MMLU grader reads through its `math_verify.parse` fallback.

When "The answer is (X)" does not match, the course grader scores `math_verify.parse(text)`
(math_verify 0.9.0, default settings) against the gold letter with `math_verify.verify`. A letter
gold can only equal a string, and the one string parse returns is the text of the FIRST candidate
answer it tries (its "fallback"), whether or not that candidate parsed as math. So the score
depends on which candidate comes first, and on what that candidate's text normalizes to:

Candidates. A math span: `$...$` (on one line, not right after a digit or a backslash),
`$$...$$`, `\(...\)`, `\[...\]`, `[...]` between two whitespace characters, or `\frac{1}{2}`
with plain numbers, each optionally followed by a percent sign; up to six spans joined by
"and", "or" or commas form one candidate. A `\boxed{...}`, alone or inside a span. A number or
arithmetic expression (`5`, `-3`, `1,234.5`, `.5`, `45%`, `$100`, `2/3`) that starts the text or
follows whitespace or "=".

Order. Each candidate is ranked by what precedes it, best first:
    0   "final answer is X. I hope"
    50  "final answer ... is X", and any \boxed{...}
    100 "answer:" and X starting within 50 characters (for a number, also right after an "="
        within 100 characters)
    200 the same after "answer" without the colon
    300 X anywhere
Within the best rank present, the candidate that ENDS rightmost is tried first (on a tie, the
one that starts leftmost). A number tried first means no letter, however many letters follow.

Text. A span's content loses `$`, quotes, `\!`, `\displaystyle` and empty `\text{}`; `\mathrm`,
`\mathbf`, `\textbf`... become `\text`; a trailing `\text{...}` goes if anything is left; a box
gives its content (the last box, or the last few when they sit close together, joined by commas);
surrounding spaces are stripped. Joined spans read "X and Y". A letter counts only if that text is
exactly one capital letter.

Examples (all as math_verify 0.9.0 reads them):
    >>> fallback_letter("Dose 5 mg. $D$")                  # the span ends after the number
    'D'
    >>> fallback_letter("A 45-year-old man. So $B$")
    'B'
    >>> fallback_letter("$B$ for a 45-year-old man")        # the number ends last
    >>> fallback_letter("Answer: $B$. The dose is 5 mg")    # both ranked 100; "5" ends last
    >>> fallback_letter("So \\boxed{C}, at 5 mg")           # a box outranks the number
    'C'
    >>> fallback_letter("$B \\text{ (Aspirin)}$"), fallback_letter("I pick [B] here")
    ('B', 'B')
    >>> fallback_letter("\\boxed{\\text{B}}"), fallback_letter("$B$ or $C$"), fallback_letter("Answer: B")
    (None, None, None)

Not reproduced (measured to be rare, see EVAL.md): math_verify also drops unit words at the end
of a span (`$B cm$` reads "B"), and reads a joined candidate as its first span alone when a later
span does not parse as LaTeX.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- candidates

# (opening, one character of content, closing) of each kind of math span.
_SPANS = [
    (r"(?<!\\)\$\$", r"(?:[^$]|\$(?!\$))", r"(?<!\\)\$\$"),
    (r"(?<!\\)\\\[", r"(?:[^\\]|\\(?!\]))", r"(?<!\\)\\\]"),
    (r"(?<![\\\d])\$", r"(?:\\\$|[^\n$])", r"(?<!\\)\$"),
    (r"(?<!\\)\\\(", r"(?:[^\\\n]|\\(?!\)))", r"(?<!\\)\\\)"),
    (r"\s\[", r"[^\n\]\[]", r"\]\s"),
]
_PLAIN_NUMBER = r"-?\d+(?:[.,]\d+)?"
_PERCENT = r"\s*(?:\\?%|[Pp]ercent|[Pp]ercentage|[Pp]ct)?"
_JOINER = r"\s*(?:,?and|,?or|,)\s*"
_CHAIN = 6  # spans joined into one candidate


def _span(k: int, boxed: bool) -> str:
    """One math span; its content in group `s{k}_{i}`. `boxed`: only spans holding a \\boxed{...}."""
    kinds = []
    for i, (opening, char, closing) in enumerate(_SPANS):
        content = rf"{char}*?\\boxed\{{{char}+?\}}{char}*?" if boxed else rf"{char}+?"
        kinds.append(rf"{opening}(?P<s{k}_{i}>{content}){closing}")
    if not boxed:
        kinds.append(rf"(?P<s{k}_f>-?\\frac\{{{_PLAIN_NUMBER}\}}\{{{_PLAIN_NUMBER}\}})")
    return rf"(?:(?:{'|'.join(kinds)}){_PERCENT})"


def _chain(boxed: bool) -> str:
    # After a boxed span, trailing whitespace belongs to the candidate even when nothing is joined.
    lead = r"\s*" if boxed else ""
    return _span(0, boxed) + "".join(rf"{lead}(?:{_JOINER}{_span(k, boxed)})?" for k in range(1, _CHAIN))


_OPS = r"+\-*×/^()÷"
_EXPR_CHAR = rf"[\d.\s{_OPS}]"
_NUMBER = (r"(?<!\d)(?:-?[1-9]\d{0,2}(?:[ ,]\d{3})+(?:\.\d+)?|-?\d+[.,]\d+|\.\d+|-?\d+)"
           r"(?:\s*(?:%|[Pp]ercent|\s*[Pp]ercentage|\s*[Pp]ct))?")
_BEFORE = r"(?:^|\s|=)(?:\*\*)?"
_EXPR = rf"{_BEFORE}-?\(?-?\d{_EXPR_CHAR}*[{_OPS}]{_EXPR_CHAR}+\)?(?:\*\*)?(?:[.,:\s)$]|$)"
_CURRENCY = "[$£¥฿\u20a1-\u20bf]"
_NUMBER_ALONE = rf"{_BEFORE}{_CURRENCY}?{_NUMBER}"
_EXPR_OR_NUMBER = rf"(?:{_EXPR}|{_NUMBER_ALONE})"

_MATH, _BOX, _OTHER = "math", "box", "number"
_ANSWER = "(?i:answer)"
_FINAL_IS = r"(?i:final answer.{0,100}?)\s+is"
_HOPE = r"\.?\s?I hope"


def _ranked_patterns() -> list[tuple[int, re.Pattern, str]]:
    """(rank, pattern, kind) in math_verify's order: by rank, math before numbers within one."""
    math, boxed_math = _chain(boxed=False), _chain(boxed=True)
    in_math = [
        (0, rf"(?i:final answer is):?\s*{math}{_HOPE}", _MATH),
        (50, rf"{_FINAL_IS}:?\s*{math}", _MATH),
        (100, rf"{_ANSWER}:.{{0,50}}?{math}", _MATH),
        (200, rf"{_ANSWER}.{{0,50}}?{math}", _MATH),
        (300, math, _MATH),
        (50, boxed_math, _MATH),
        (50, r"(?P<box>\\boxed\{.+\})", _BOX),  # to the LAST "}" of the text
    ]
    in_numbers = [
        (0, rf"(?i:final answer is):?\s*{_EXPR_OR_NUMBER}{_HOPE}", _OTHER),
        (50, rf"{_FINAL_IS}:?{_EXPR_OR_NUMBER}", _OTHER),
        (100, rf"{_ANSWER}:(?:.{{0,100}}=\s*|.{{0,50}}?){_EXPR_OR_NUMBER}(?!\s*=)", _OTHER),
        (200, rf"{_ANSWER}(?:.{{0,100}}=\s*|.{{0,50}}?){_EXPR_OR_NUMBER}(?!\s*=)", _OTHER),
        (300, _EXPR, _OTHER),
        (300, _NUMBER_ALONE, _OTHER),
    ]
    ranked = [(rank, re.compile(p, re.DOTALL), kind) for rank, p, kind in in_math]
    ranked += [(rank, re.compile(p), kind) for rank, p, kind in in_numbers]
    return sorted(ranked, key=lambda r: r[0])  # stable: keeps math before numbers on a rank


_RANKED = _ranked_patterns()


def fallback_letter(text: str) -> str | None:
    """The capital letter math_verify's parse of `text` leaves as its string, or None (see above).

    `text` is taken as the grader passes it, already stripped.
    """
    for rank in sorted({rank for rank, _, _ in _RANKED}):
        found = [(m, kind) for r, pattern, kind in _RANKED if r == rank for m in pattern.finditer(text)]
        # Rightmost end first, then leftmost start; `sorted` is stable, so ties keep pattern order.
        for match, kind in sorted(found, key=lambda f: (f[0].end(), -f[0].start()), reverse=True):
            candidate = _candidate_text(match, kind)
            if candidate:
                return candidate if re.fullmatch("[A-Z]", candidate) else None
    return None


def _candidate_text(match: re.Match, kind: str) -> str:
    """The text math_verify keeps for a candidate (empty if it has none)."""
    if kind == _OTHER:
        return match.group()
    if kind == _BOX:
        return _normalized(match.group("box"), last_box_only=True)
    groups = match.groupdict()
    spans = []
    for k in range(_CHAIN):
        spans += [v for name, v in groups.items() if name.startswith(f"s{k}_") and v is not None][:1]
    return " and ".join(_normalized(span, last_box_only=False) for span in spans)


# ---------------------------------------------------------------- normalization of a span

_REMOVED = re.compile(r"\\mathrm\{th\}|\\!\s*|\\text\s*\{\s*\}|\\\$|\$|(?<!\\)[\"']|\\displaystyle")
_TEXT_COMMAND = re.compile(r"\\math(?:rm|it|bf)|\\text(?:normal|bf|it|rm)|(?<!\\)\\\s")
_DOUBLED_BACKSLASH = re.compile(r"\\\\(?=[a-zA-Z])")
_TRAILING_TEXT = re.compile(r"(\\(?:text|mbox)\{.*?\})(\^\d|\{\^\d\})?$")
_SEPARATOR = re.compile(r"\b(and|or)\b|,|;")


def _normalized(latex: str, last_box_only: bool) -> str:
    latex = _boxed_contents(latex, last_box_only)
    latex = _REMOVED.sub("", latex)
    latex = _TEXT_COMMAND.sub(lambda m: " " if m.group()[1].isspace() else r"\text", latex)
    latex = latex.replace("\n", " ").replace("\t", " ")
    if "matrix" not in latex:
        latex = _DOUBLED_BACKSLASH.sub(r"\\", latex)
    without_text = _TRAILING_TEXT.sub("", latex).strip()
    return (without_text or latex).strip()


def _boxed_contents(latex: str, last_only: bool) -> str:
    r"""The content of the `\boxed{}`/`\fbox{}` in `latex`, or `latex` itself if it has none.

    Boxes are read from the right. All of them (joined by commas, consecutive repeats once), or
    with `last_only` the last one plus each earlier one that is under 10 characters before it, or
    under 70 with "and", "or", "," or ";" between and a different content. An unclosed box gives
    the rest of the text.
    """
    found: list[str] = []
    end = len(latex)  # boxes are searched left of the one found last
    while True:
        start = max(latex.rfind("\\boxed", 0, end), latex.rfind("\\fbox", 0, end))
        if start < 0:
            break
        brace = start + (6 if latex.startswith("\\boxed", start) else 5)
        while brace < end and latex[brace].isspace():
            brace += 1
        if brace >= end:
            break
        close = _closing_brace(latex, brace, end) if latex[brace] == "{" else None
        if close is None:
            if not found:
                found.append(latex[brace:])
            break
        content = latex[brace + 1:close].strip()
        if last_only and found and not _kept_with(latex[close + 1:end], content, found[-1]):
            break
        if not found or found[-1] != content:
            found.append(content)
        end = start
    return ",".join(reversed(found)) if found else latex


def _closing_brace(latex: str, opening: int, end: int) -> int | None:
    depth = 1
    for i in range(opening + 1, end):
        depth += {"{": 1, "}": -1}.get(latex[i], 0)
        if depth == 0:
            return i
    return None


def _kept_with(between: str, content: str, later: str) -> bool:
    """Whether an earlier box joins the later one in `last_only` mode."""
    return len(between) < 10 or (content != later and len(between) < 70 and bool(_SEPARATOR.search(between)))
