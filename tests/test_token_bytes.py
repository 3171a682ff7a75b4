"""scheduler/token_bytes.py: text from a byte-level tokenizer's token table equals the tokenizer's own
decoding, whole and streamed, for any ids; and the detokenizer gives the same text either way."""

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from models.sampler import SamplingParams
from scheduler.detokenizer import IncrementalDetokenizer, decode_output
from scheduler.token_bytes import TokenBytes


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_model_dir)  # SmolLM2's: byte-level BPE


@pytest.fixture(scope="module")
def table(tokenizer):
    built = TokenBytes.build(tokenizer)
    assert built is not None
    return built


def _ids(tokenizer):
    # Mostly ordinary tokens, with the special ones (ids 0-16 here) and single bytes mixed in.
    return st.lists(st.one_of(st.integers(0, 20), st.integers(0, len(tokenizer) - 1)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), skip=st.booleans())
def test_text_equals_the_tokenizers_decoding(tokenizer, table, data, skip):
    ids = data.draw(_ids(tokenizer))
    assert table.text(ids, skip) == tokenizer.decode(ids, skip_special_tokens=skip)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), skip=st.booleans())
def test_a_stream_returns_the_same_text_a_character_at_a_time(tokenizer, table, data, skip):
    context, ids = data.draw(_ids(tokenizer)), data.draw(_ids(tokenizer))
    whole = table.stream([], skip)
    before = [whole.add(t) for t in context]
    after = [whole.add(t) for t in ids]
    # Nothing is lost or changed by streaming: with what is still held back, it is the whole text ...
    assert "".join(before + after) + whole._decoder.decode(b"", final=True) == table.text(context + ids, skip)
    # ... and a stream primed with the context returns exactly what follows it.
    primed = table.stream(context, skip)
    assert [primed.add(t) for t in ids] == after


def test_the_detokenizer_makes_the_same_text_with_or_without_the_table(tokenizer, table):
    text = "Héllo, wörld! 日本語のテキスト, emoji 🙂🚀 and a stop here: END. Then more text after it."
    ids = tokenizer(text).input_ids
    prompt = tokenizer("Say something:").input_ids
    for stop in ([], ["END"], ["🚀"]):
        params = SamplingParams(max_tokens=len(ids), stop=stop)
        outs = []
        for token_bytes in (None, table):
            detok = IncrementalDetokenizer(tokenizer, prompt, params, token_bytes)
            streamed, stopped = "", False
            for t in ids:
                stopped = detok.add(t)
                streamed += detok.take(stopped)
                if stopped:
                    break
            outs.append((streamed, stopped))
        assert outs[0] == outs[1]
        if not stop:
            assert outs[1][0] == text == decode_output(tokenizer, prompt, ids, params, table)
        else:
            assert outs[1][1] and outs[1][0] == text[:text.index(stop[0])]


def test_tokenizers_that_are_not_byte_level_get_no_table():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "▁hello": 1, "▁world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()  # SentencePiece-style: a leading space is dropped
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert TokenBytes.build(tok) is None
