"""Batched detokenization says exactly what one decode per window says."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from scheduler.detokenizer import decode_windows


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


_IDS = st.lists(st.integers(0, 49151), max_size=8)


@settings(max_examples=200, deadline=None)
@given(windows=st.lists(st.tuples(_IDS, _IDS), max_size=12), data=st.data())
def test_decode_windows_equals_one_decode_each(tokenizer, windows, data):
    skip = [data.draw(st.booleans()) for _ in windows]
    expected = [(tokenizer.decode(p, skip_special_tokens=s), tokenizer.decode(f, skip_special_tokens=s))
                for (p, f), s in zip(windows, skip)]
    assert decode_windows(tokenizer, windows, skip) == expected


def test_without_a_rust_backend_it_decodes_one_by_one(tokenizer):
    class Plain:  # a tokenizer with only `decode`, as slow tokenizers are
        decode = staticmethod(tokenizer.decode)

    windows = [([5, 6], [5, 6, 7]), ([], [2, 300])]
    assert decode_windows(Plain(), windows, [True, False]) == decode_windows(tokenizer, windows, [True, False])
