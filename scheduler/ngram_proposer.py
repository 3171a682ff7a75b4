"""Draft tokens by n-gram lookup in a sequence's own tokens (prompt lookup decoding).

Outputs that copy from their prompt (a path through a graph's listed edges, an option's text, a
quoted passage) repeat its n-grams: when the last n tokens occurred before, the tokens that followed
them then are a good guess for what follows now. The guess costs no model: the target model checks
every draft token in the step that computes them (see Scheduler.accept_drafts), so output is
unchanged whether the guess is right or not.
"""

from __future__ import annotations

from typing import Protocol


class DraftedSequence(Protocol):
    seq_id: int
    token_ids: list[int]


class NgramProposer:
    """For each sequence, an index of where each n-gram last ended, grown as its tokens grow.

    `propose` looks the sequence's last n tokens up, longest n first (`max_ngram` down to
    `min_ngram`), and proposes the up to `limit` tokens that followed their most recent earlier
    occurrence. Indexing costs a few dict writes per new token, so a step never rescans a prompt.
    The index is keyed by the n-grams' hashes, not the n-grams (a third of the memory): a collision
    can only make a wrong guess, which the model then rejects.
    """

    def __init__(self, min_ngram: int = 2, max_ngram: int = 4):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram} and {max_ngram}")
        self.sizes = range(max_ngram, min_ngram - 1, -1)
        # seq_id -> hash of an n-gram -> where its last occurrence ended; seq_id -> occurrences ending
        # before this position are indexed
        self._last_end: dict[int, dict[int, int]] = {}
        self._indexed: dict[int, int] = {}

    def propose(self, seq: DraftedSequence, limit: int) -> list[int]:
        """Up to `limit` draft tokens to follow `seq.token_ids` (no drafts among them), or []."""
        tokens = seq.token_ids
        if limit < 1 or len(tokens) < 2:
            return []
        index = self._last_end.setdefault(seq.seq_id, {})
        # Occurrences ending before len(tokens): the suffix itself is not a match for itself.
        for end in range(max(self._indexed.get(seq.seq_id, 1), 1), len(tokens)):
            for n in self.sizes:
                if end >= n:
                    index[hash(tuple(tokens[end - n:end]))] = end
        self._indexed[seq.seq_id] = len(tokens)
        for n in self.sizes:
            end = index.get(hash(tuple(tokens[-n:]))) if len(tokens) > n else None
            if end is not None:
                return tokens[end:end + limit]
        return []

    def forget(self, seq_id: int) -> None:
        """Drop a finished sequence's index."""
        self._last_end.pop(seq_id, None)
        self._indexed.pop(seq_id, None)
