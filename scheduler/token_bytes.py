"""Each token's bytes, for byte-level BPE tokenizers, so text is made by a table lookup per token.

In the byte-level scheme (GPT-2's; Qwen, Llama 3 and SmolLM2 use it) every token stands for a fixed
byte string, and a sequence's text is the UTF-8 decoding of its tokens' bytes joined. Detokenizing a
stream then needs no tokenizer call at all: an incremental UTF-8 decoder fed each token's bytes gives
the new text, holding back a character whose bytes have not all arrived. A tokenizer call per token
(two, for the windowed method that works for any tokenizer) cost ~17 µs on the CPU machine: a few
milliseconds a step at batch 256, on the engine's own loop.

`TokenBytes.build` returns None for any tokenizer this does not provably fit, and checks the table
against the tokenizer's own decoding before it is used.
"""

from __future__ import annotations

import codecs
import hashlib
import random

# Built tables by the tokenizer's serialized form: engines in one process (tests, a large and a small
# model) usually share a tokenizer, and building and checking one takes a fraction of a second.
_BUILT: dict[str, TokenBytes | None] = {}


def _unicode_to_byte() -> dict[str, int]:
    """The byte-level alphabet: bytes that are printable Latin-1 stand for themselves, the others
    (controls, space, ...) for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenBytes:
    """The bytes of every token id, and which ids are special (skipped by skip_special_tokens)."""

    def __init__(self, table: list[bytes], special: frozenset[int]):
        self.table, self.special = table, special

    @classmethod
    def build(cls, tokenizer, check_sequences: int = 64) -> TokenBytes | None:
        """The table for a Hugging Face fast tokenizer whose decoder is plain ByteLevel (and that
        does no clean-up of spaces), verified against its own decoding; else None."""
        from tokenizers import decoders

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or type(backend.decoder) is not decoders.ByteLevel:
            return None
        if getattr(tokenizer, "clean_up_tokenization_spaces", False):
            return None
        key = hashlib.sha1(backend.to_str().encode()).hexdigest()
        if key not in _BUILT:
            _BUILT[key] = cls._build(tokenizer, backend, check_sequences)
        return _BUILT[key]

    @classmethod
    def _build(cls, tokenizer, backend, check_sequences: int) -> TokenBytes | None:
        alphabet = _unicode_to_byte()
        added = tokenizer.added_tokens_decoder
        table: list[bytes] = [b""] * backend.get_vocab_size(with_added_tokens=True)
        for token, token_id in backend.get_vocab(with_added_tokens=True).items():
            if token_id in added:
                table[token_id] = added[token_id].content.encode()
            elif all(c in alphabet for c in token):
                table[token_id] = bytes(alphabet[c] for c in token)
            else:
                return None  # not the byte-level alphabet after all
        self = cls(table, frozenset(i for i, t in added.items() if t.special))
        return self if self._agrees_with(tokenizer, check_sequences) else None

    def _agrees_with(self, tokenizer, sequences: int) -> bool:
        """Every single token, and random sequences, decode here as the tokenizer decodes them."""
        rng = random.Random(0)
        ids = [[i] for i in range(len(self.table))]
        ids += [[rng.randrange(len(self.table)) for _ in range(rng.randint(2, 24))] for _ in range(sequences)]
        for skip in (False, True):
            # The backend's own decode: what tokenizer.decode returns when it cleans up no spaces.
            theirs = tokenizer.backend_tokenizer.decode_batch(ids, skip_special_tokens=skip)
            if any(self.text(seq, skip) != text for seq, text in zip(ids, theirs)):
                return False
        return True

    def piece(self, token_id: int, skip_special_tokens: bool) -> bytes:
        if skip_special_tokens and token_id in self.special:
            return b""
        return self.table[token_id] if 0 <= token_id < len(self.table) else b""

    def text(self, ids: list[int], skip_special_tokens: bool) -> str:
        """The whole text of `ids`, as the tokenizer decodes it (invalid bytes become U+FFFD)."""
        return b"".join(self.piece(i, skip_special_tokens) for i in ids).decode("utf-8", "replace")

    def stream(self, context: list[int], skip_special_tokens: bool) -> ByteStream:
        """An incremental decoder that has already read `context` (whose text it does not return)."""
        return ByteStream(self, context, skip_special_tokens)


class ByteStream:
    """Token ids in, new text out: a character is returned once all its bytes have arrived."""

    def __init__(self, token_bytes: TokenBytes, context: list[int], skip_special_tokens: bool):
        self._table = token_bytes.table
        # Skipped ids read as no bytes; so do ids past the table, as in TokenBytes.piece.
        self._skipped = token_bytes.special if skip_special_tokens else frozenset()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._decoder.decode(b"".join(token_bytes.piece(t, skip_special_tokens) for t in context))

    def add(self, token_id: int) -> str:
        """Called per token on the engine's loop: a set test, a list index and the UTF-8 decoder."""
        if token_id in self._skipped or not 0 <= token_id < len(self._table):
            return ""
        return self._decoder.decode(self._table[token_id])
