"""Incremental detokenization with stop strings, for one sequence."""

from __future__ import annotations

from models.sampler import SamplingParams
from scheduler.token_bytes import TokenBytes

# Prompt tokens decoded along with the output so tokenizers that drop a leading space at the
# start of a decode (SentencePiece) still produce the right first word.
_CONTEXT_TOKENS = 5


def decode_output(tokenizer, prompt_ids: list[int], output_ids: list[int], params: SamplingParams,
                  token_bytes: TokenBytes | None = None) -> str:
    """The text of a finished output in one decode: what IncrementalDetokenizer would have emitted
    token by token (same context window, no incomplete character at the end), for outputs nobody
    streams and no stop string has to be watched for."""
    context = list(prompt_ids[-_CONTEXT_TOKENS:])
    skip = params.skip_special_tokens
    if token_bytes is not None:
        stream = token_bytes.stream(context, skip)
        return "".join(stream.add(t) for t in output_ids)
    prefix = tokenizer.decode(context, skip_special_tokens=skip)
    return tokenizer.decode(context + output_ids, skip_special_tokens=skip)[len(prefix):].rstrip("\ufffd")


class IncrementalDetokenizer:
    """Turns each new token into new text, finds stop strings, and holds back text that might be
    the start of one, so streamed text never has to be taken back.

    Decoding the whole output each step would be quadratic; this decodes a short window and
    emits text only once it no longer ends in an incomplete UTF-8 character.
    """

    def __init__(self, tokenizer, prompt_ids: list[int], params: SamplingParams,
                 token_bytes: TokenBytes | None = None):
        self.tokenizer = tokenizer
        self.params = params
        self.ids = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        self.emitted = 0
        self.holdback = max((len(s) for s in params.stop), default=1) - 1
        # A byte-level tokenizer's text comes from its token table, with no decode call (token_bytes.py).
        self._bytes = token_bytes.stream(self.ids, params.skip_special_tokens) if token_bytes is not None else None

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.params.skip_special_tokens)

    def add(self, token_id: int) -> bool:
        """Append one token's text. Returns True if a stop string now ends the output."""
        before = len(self.text)
        if self._bytes is not None:
            self.text += self._bytes.add(token_id)
        else:
            self.ids.append(token_id)
            prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
            full = self._decode(self.ids[self.prefix_offset:])
            if len(full) > len(prefix) and not full.endswith("\ufffd"):
                self.text += full[len(prefix):]
                self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        if self.params.stop and len(self.text) > before:
            # Only the new text and the longest stop's overlap with the old can hold a new match.
            start = max(0, before - self.holdback)
            hits = [i for i in (self.text.find(s, start) for s in self.params.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                return True
        return False

    def take(self, finished: bool) -> str:
        """Text not yet handed out; while running, keeps back what a stop string could still claim."""
        end = len(self.text) if finished else max(self.emitted, len(self.text) - self.holdback)
        out = self.text[self.emitted:end]
        self.emitted = end
        return out
