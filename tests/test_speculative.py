"""Speculative decoding by n-gram drafts: the proposer finds what it should (against a brute-force
search, for every input), and an engine with drafts produces exactly the tokens, logprobs and text
of one without, through batching, chunked prefill, preemption, prefix caching, stop rules and
sampled requests alongside; every block comes back. Exactness against transformers on real weights
is test_engine_smollm2.py's."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.config import parse_args
from models.sampler import SamplingParams
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.ngram_proposer import NgramProposer
from tests.engine_runs import assert_pool_clean, run_prompts


@dataclasses.dataclass
class _Seq:
    seq_id: int
    token_ids: list[int]


def _reference_proposal(tokens: list[int], limit: int, min_n: int, max_n: int) -> list[int]:
    """The definition: the longest suffix of n tokens (max_n down to min_n) that occurred earlier,
    and the tokens after its latest earlier occurrence."""
    for n in range(max_n, min_n - 1, -1):
        if len(tokens) <= n:
            continue
        suffix = tokens[-n:]
        for end in range(len(tokens) - 1, n - 1, -1):
            if tokens[end - n:end] == suffix:
                return tokens[end:end + limit]
    return []


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(st.integers(0, 3), min_size=0, max_size=60), limit=st.integers(0, 6),
       cuts=st.lists(st.integers(0, 60), max_size=4), sizes=st.sampled_from([(1, 1), (2, 4), (1, 3), (3, 3)]))
def test_the_proposer_drafts_what_follows_the_latest_earlier_occurrence_of_the_longest_suffix(tokens, limit, cuts,
                                                                                            sizes):
    proposer = NgramProposer(*sizes)
    seq = _Seq(7, [])
    # The index grows with the sequence: ask at a few lengths on the way, as decoding does.
    for length in sorted({c for c in cuts if c <= len(tokens)} | {len(tokens)}):
        seq.token_ids = tokens[:length]
        assert proposer.propose(seq, limit) == _reference_proposal(seq.token_ids, limit, *sizes)
    proposer.forget(7)
    assert proposer.propose(_Seq(7, tokens), limit) == _reference_proposal(tokens, limit, *sizes)


def test_the_proposer_refuses_bad_sizes():
    with pytest.raises(ValueError, match="min_ngram"):
        NgramProposer(3, 2)


# Prompts that repeat themselves (drafts find matches), one that does not, and ones whose earlier
# n-grams mislead: the tiny model repeats its last token, so drafts taken from "9 9 5 6 7" fail at
# once and those from "8 8 8 4" after two kept tokens.
PROMPTS = [[100 + (j % 7) for j in range(40)], [200 + (j * j) % 11 for j in range(29)],
           [(13 * j) % 4000 + 300 for j in range(35)], [500, 501, 502, 500, 501, 502, 500, 501],
           [9, 9, 5, 6, 7, 3, 9, 9], [8, 8, 8, 8, 4, 1, 8, 8]]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _engine(tiny_model_dir, **kw) -> LLMEngine:
    # A fixed, small cache: on a GPU the default would take 90% of its memory for the first engine.
    return LLMEngine(EngineConfig(model=str(tiny_model_dir), **{"kv_cache_gib": 0.25, **kw}))


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    """Outputs without drafts: the reference."""
    return run_prompts(_engine(tiny_model_dir), PROMPTS, GREEDY)


def _assert_same_and_drafted(engine, outputs, reference):
    assert [o.token_ids for o in outputs] == [o.token_ids for o in reference]
    assert [o.text for o in outputs] == [o.text for o in reference]
    stats = engine.stats()
    assert stats.accepted_draft_tokens > 0 and stats.draft_tokens > stats.accepted_draft_tokens
    assert_pool_clean(engine)


@pytest.mark.parametrize("engine_args, stagger", [
    ({}, 0),
    ({}, 2),                                                 # requests join while others decode with drafts
    ({"max_num_batched_tokens": 12}, 0),                     # drafts share a small budget with prefill chunks
    ({"block_size": 4, "num_kv_blocks": 22}, 0),             # drafts dropped, then sequences preempted
    ({"block_size": 4, "enable_prefix_caching": True}, 1),   # verified blocks published, then reused
], ids=["batch", "staggered", "chunked", "preempted", "prefix-cache"])
def test_drafts_change_no_output(tiny_model_dir, plain, engine_args, stagger):
    engine = _engine(tiny_model_dir, speculative_ngram=4, **engine_args)
    outputs = run_prompts(engine, PROMPTS, GREEDY, stagger=stagger)
    _assert_same_and_drafted(engine, outputs, plain)
    if "num_kv_blocks" in engine_args:
        assert engine.stats().num_preemptions > 0


def test_drafts_keep_logprobs_stop_rules_and_sampled_neighbours(tiny_model_dir):
    """Logprobs of every kept token, max_tokens and a stop string met inside a run of kept drafts, and a
    seeded sampled request (which never drafts) in the same steps: all as without drafts."""
    params = [dataclasses.replace(GREEDY, logprobs=2), dataclasses.replace(GREEDY, max_tokens=5),
              SamplingParams(temperature=0.8, top_k=20, seed=3, max_tokens=24, ignore_eos=True),
              dataclasses.replace(GREEDY, stop=["xxxxx"])]  # the first prompt's output is 'xxxx...'
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0]]
    reference = run_prompts(_engine(tiny_model_dir), prompts, params)
    engine = _engine(tiny_model_dir, speculative_ngram=3)
    outputs = run_prompts(engine, prompts, params)
    assert [(o.token_ids, o.text, o.finish_reason) for o in outputs] \
        == [(o.token_ids, o.text, o.finish_reason) for o in reference]
    # The same values, computed in a step of another shape: equal to float32 rounding.
    ours, theirs = outputs[0].logprobs, reference[0].logprobs
    assert [[t for t, _ in top] for _, top in ours] == [[t for t, _ in top] for _, top in theirs]
    assert [lp for lp, _ in ours] == pytest.approx([lp for lp, _ in theirs], abs=1e-5)
    assert len(outputs[1].token_ids) == 5
    assert reference[3].finish_reason == "stop" and len(reference[3].token_ids) == 5
    assert engine.stats().accepted_draft_tokens > 0
    assert_pool_clean(engine)


def test_drafts_ask_for_synchronous_steps(tiny_model_dir):
    with pytest.raises(ValueError, match="async_scheduling"):
        _engine(tiny_model_dir, speculative_ngram=2, async_scheduling=True)
    assert not _engine(tiny_model_dir, speculative_ngram=2).async_scheduling
    with pytest.raises(ValueError, match="speculative_ngram"):
        _engine(tiny_model_dir, speculative_ngram=-1)


def test_the_server_flag_reaches_both_engines():
    config = parse_args(["--small-model", "embedded", "--speculative-ngram", "4"])
    assert config.engine_config(small=False).speculative_ngram == 4
    assert config.engine_config(small=True).speculative_ngram == 4
    assert parse_args([]).engine_config(small=False).speculative_ngram == 0


def test_the_benchmark_runs_task_prompts_with_and_without_drafts(tiny_model_dir, capsys):
    from bench.speculative import main
    assert main(["--model", str(tiny_model_dir), "--num-each", "1", "--k", "2", "--max-tokens", "8"]) == 0
    table = capsys.readouterr().out.splitlines()[-2:]  # one row without drafts, one with
    assert [row.split()[0] for row in table] == ["0", "2"]
    assert all(row.split()[-1] == "True" for row in table)  # the same output with drafts
