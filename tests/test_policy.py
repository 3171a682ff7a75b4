"""Per-task policy table and the streamed <think> filter."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.policy import DEFAULT_POLICIES, load_policies
from tasks.thinking import ThinkingFilter, strip_thinking


def test_defaults_cover_every_router_label():
    from tasks.router import LABELS
    assert set(DEFAULT_POLICIES) == set(LABELS)


def test_policy_file_overrides_fields(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"infobench": {"model": "small", "sampling": {"temperature": 0.5}},
                                "mmlu_med": {"priority": 3}}))
    policies = load_policies(path)
    assert policies["infobench"].model == "small" and policies["infobench"].sampling == {"temperature": 0.5}
    assert policies["mmlu_med"].priority == 3
    assert policies["graph"] == DEFAULT_POLICIES["graph"]


@pytest.mark.parametrize("content, message", [
    ("{", "policy file"), ("[]", "expected an object"), ('{"chess": {}}', "unknown task"),
    ('{"graph": {"colour": 1}}', "fields must be among"), ('{"graph": {"model": "huge"}}', "model must be one of"),
    ('{"graph": {"sampling": {"temprature": 0}}}', "unknown fields \\['temprature'\\]"),
    ('{"graph": {"sampling": {"top_p": 0}}}', "top_p must be in"),
])
def test_bad_policy_files(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_policies(path)


def test_auto_model_choice_by_prompt_length():
    policy = DEFAULT_POLICIES["infobench"]
    assert policy.choose_model("short") == "small"
    assert policy.choose_model("x" * 5000) == "large"


@pytest.mark.parametrize("text, expected", [
    ("<think>\nreasoning</think>\n\nThe answer is (B).", "The answer is (B)."),
    ("no thinking here", "no thinking here"),
    ("<think>never closed", ""),
    ("a <think>x</think>b<think>y</think>c", "a bc"),
    ("<think></think>\n\nAnswer", "Answer"),
])
def test_strip_thinking(text, expected):
    assert strip_thinking(text) == expected


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(["<think>", "</think>", "<", "th", "ink>", "\n", "The answer", " is ", "(B)",
                                       "</", "x"]), max_size=25),
       cuts=st.lists(st.integers(0, 200), max_size=10))
def test_streaming_filter_equals_whole_text(parts, cuts):
    """However the text is cut into stream pieces, the filter emits exactly strip_thinking(text)."""
    text = "".join(parts)
    bounds = sorted({0, len(text), *[c % (len(text) + 1) for c in cuts]})
    f = ThinkingFilter()
    streamed = "".join(f.feed(text[a:b]) for a, b in zip(bounds, bounds[1:])) + f.finish()
    assert streamed == strip_thinking(text)
