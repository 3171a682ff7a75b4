"""Removing a model's <think>...</think> reasoning from what the client receives."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ThinkingFilter:
    """Streams text with every <think>...</think> span removed (and an unfinished one at the end).

    Text that might be the start of a tag is held back until the next piece decides it, so what was
    emitted is never wrong. `feed` and `finish` together return exactly `strip_thinking(whole)`.
    """

    def __init__(self):
        self._pending = ""
        self._inside = False
        self._after_close = False  # the answer after a think block starts with blank lines: drop them

    def _visible(self, chunk: str) -> str:
        if self._after_close:
            chunk = chunk.lstrip("\n")
            self._after_close = not chunk
        return chunk

    def feed(self, text: str) -> str:
        self._pending += text
        out = []
        while True:
            tag = CLOSE if self._inside else OPEN
            i = self._pending.find(tag)
            if i >= 0:
                if not self._inside:
                    out.append(self._visible(self._pending[:i]))
                self._pending = self._pending[i + len(tag):]
                self._inside = not self._inside
                self._after_close = not self._inside
                continue
            # Keep back a suffix that could still grow into the tag.
            keep = next((k for k in range(min(len(tag) - 1, len(self._pending)), 0, -1)
                         if tag.startswith(self._pending[-k:])), 0)
            if not self._inside:
                out.append(self._visible(self._pending[:len(self._pending) - keep]))
            self._pending = self._pending[len(self._pending) - keep:]
            return "".join(out)

    def finish(self) -> str:
        rest, self._pending = ("" if self._inside else self._visible(self._pending)), ""
        return rest


def strip_thinking(text: str) -> str:
    """`text` without its <think>...</think> spans; an unclosed span is dropped to the end."""
    f = ThinkingFilter()
    return f.feed(text) + f.finish()
