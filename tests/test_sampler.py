"""Acceptance 4: top-k/top-p/min-p keep exactly the allowed tokens, and seeded sampling is
reproducible whatever else is in the batch."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import SequenceError
from models.rows import PlainRow
from models.sampler import Sampler, SamplingParams, _candidates, _filtered_probs, noise_key, seeded_exponential
from models.stop_rule import StopRule


def allowed_reference(logits: list[float], temperature, top_k, top_p, min_p) -> set[int]:
    """The definition, spelled out on plain lists: top-k, then top-p on the renormalised rest, then min-p."""
    order = sorted(range(len(logits)), key=lambda i: -logits[i])
    if top_k > 0:
        order = order[:top_k]
    exps = [math.exp((logits[i] - logits[order[0]]) / temperature) for i in order]
    total = sum(exps)
    probs = [e / total for e in exps]
    kept, mass = [], 0.0
    for i, p in zip(order, probs):
        if kept and (mass >= top_p or p < min_p * probs[0]):
            continue
        kept.append(i)
        mass += p
    return set(kept)


@settings(max_examples=300, deadline=None)
@given(
    logits=st.lists(st.floats(-8, 8, allow_nan=False).map(lambda x: round(x, 2)), min_size=2, max_size=40, unique=True),
    temperature=st.sampled_from([0.3, 0.7, 1.0, 1.5]),
    top_k=st.integers(0, 10),
    top_p=st.sampled_from([0.1, 0.5, 0.8, 0.95, 1.0]),
    min_p=st.sampled_from([0.0, 0.05, 0.2]),
)
@pytest.mark.parametrize("selected", [True, False], ids=["top-k selected", "vocabulary sorted"])
def test_filters_keep_exactly_the_allowed_tokens(selected, logits, temperature, top_k, top_p, min_p):
    """Both ways of taking a row's candidates (its top_k by selection, or the whole vocabulary sorted,
    top_k then applied as a mask) keep the same tokens: the definition's."""
    t = torch.tensor([logits], dtype=torch.float64)
    candidates, ids = _candidates(t, top_k if selected else 0)
    probs = _filtered_probs(candidates, torch.tensor([temperature], dtype=torch.float64), torch.tensor([top_k]),
                            torch.tensor([top_p], dtype=torch.float64), torch.tensor([min_p], dtype=torch.float64))
    kept = set(ids[0][probs[0] > 0].tolist())
    expected = allowed_reference(logits, temperature, top_k, top_p, min_p)
    # A token whose preceding mass lands within rounding of top_p may go either way; nothing else may.
    assert kept == expected or _boundary_case(logits, temperature, top_k, top_p)
    assert abs(probs.sum().item() - 1) < 1e-9


def _boundary_case(logits, temperature, top_k, top_p) -> bool:
    order = sorted(range(len(logits)), key=lambda i: -logits[i])[: top_k or None]
    exps = [math.exp((logits[i] - logits[order[0]]) / temperature) for i in order]
    cum = 0.0
    for e in exps:
        cum += e / sum(exps)
        if abs(cum - top_p) < 1e-9:
            return True
    return False


@pytest.mark.parametrize("top_k", [0, 3])
def test_sampled_tokens_follow_the_distribution(top_k):
    """Drawn frequencies match the filtered distribution, from the whole vocabulary or from the top_k
    candidates selected."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -0.5]]).repeat(20000, 1)
    rows = [PlainRow(params=SamplingParams(temperature=1.0, top_k=top_k))] * 20000
    tokens = Sampler()(logits, rows).token_ids
    freq = torch.bincount(tokens, minlength=5).float() / 20000
    kept = torch.tensor([2.0, 1.0, 0.0, -1.0, -0.5])
    if top_k:
        kept[kept < kept.topk(top_k).values[-1]] = float("-inf")
    expected = torch.softmax(kept, 0)
    assert (freq - expected).abs().max() < 0.015


def test_an_unfiltered_seeded_row_draws_from_the_tempered_softmax():
    """Without top-k, top-p or min-p a row races softmax(logits / T) against its noise at every id,
    exactly: no sort, no cut of the distribution's tail."""
    torch.manual_seed(1)
    logits = torch.randn(3, 500)
    rows = [PlainRow(params=SamplingParams(temperature=0.6, seed=s), seed=s, num_output_tokens=4) for s in (5, 6, 7)]
    drawn = Sampler()(logits.clone(), rows).token_ids
    for i, s in enumerate((5, 6, 7)):
        noise = seeded_exponential(torch.tensor([[noise_key(s, 4)]]), torch.arange(500)[None])[0].float()
        assert drawn[i] == ((logits[i] / 0.6).softmax(-1) / noise).argmax()


def test_top_k_one_and_greedy_agree():
    logits = torch.randn(8, 100)
    greedy = Sampler()(logits.clone(), [PlainRow(params=SamplingParams(temperature=0))] * 8).token_ids
    top1 = Sampler()(logits.clone(), [PlainRow(params=SamplingParams(top_k=1, seed=3), seed=3)] * 8).token_ids
    assert torch.equal(greedy, top1) and torch.equal(greedy, logits.argmax(-1))


@pytest.mark.parametrize("top_k, top_p", [(0, 0.95), (20, 0.95), (0, 1.0)],
                         ids=["vocabulary sorted", "top-k selected", "unfiltered"])
def test_seeded_rows_ignore_their_batch(top_k, top_p):
    """The same (seed, step) gives the same token wherever the row sits and whoever is beside it,
    whichever way its candidates are taken, among rows that take theirs in other ways."""
    torch.manual_seed(0)
    row_logits = torch.randn(1000)
    params = SamplingParams(temperature=0.9, top_p=top_p, top_k=top_k, seed=42)
    seeded = PlainRow(params=params, seed=42, num_output_tokens=7)
    alone = Sampler()(row_logits[None].clone(), [seeded]).token_ids[0]
    for batch_size in (2, 5, 17):
        logits = torch.randn(batch_size, 1000)
        pos = batch_size // 2
        logits[pos] = row_logits
        rows = [PlainRow(params=SamplingParams(temperature=1.0, top_k=(0, 5, 20, 700)[i % 4]))
                for i in range(batch_size)]
        rows[pos] = seeded
        assert Sampler()(logits, rows).token_ids[pos] == alone


def _noise(seed: int, step: int, vocab: int = 1000) -> torch.Tensor:
    return seeded_exponential(torch.tensor([[noise_key(seed, step)]]), torch.arange(vocab)[None])[0]


def test_seeded_noise_differs_by_seed_and_step():
    a = _noise(1, 0)
    assert torch.equal(a, _noise(1, 0))
    assert not torch.equal(a, _noise(2, 0))
    assert not torch.equal(a, _noise(1, 1))
    assert abs(a.mean().item() - 1.0) < 0.1  # Exp(1) has mean 1


def test_seeded_noise_at_some_ids_is_the_whole_noise_there():
    """Rows drawing among their top_k ask for their candidates' noise only, several rows at once: each
    value is the one the whole vocabulary's noise has at that id, for that row's seed and step."""
    ids = torch.tensor([[5, 999, 0, 17], [3, 3, 400, 1]])
    keys = torch.tensor([[noise_key(7, 3)], [noise_key(2**40 + 9, 0)]])
    both = seeded_exponential(keys, ids)
    assert torch.equal(both[0], _noise(7, 3)[ids[0]]) and torch.equal(both[1], _noise(2**40 + 9, 0)[ids[1]])


def test_min_tokens_bans_stop_tokens_and_logprobs_are_consistent():
    rule = StopRule(eos_token_ids=(0,))
    params = SamplingParams(temperature=0, logprobs=2, min_tokens=2, stop_token_ids=[1])
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0]])
    out = Sampler(rule)(logits.clone(), [PlainRow(params=params, num_output_tokens=1)])
    assert out.token_ids.item() == 2  # EOS and the stop token are banned below min_tokens
    assert out.top_ids[0].tolist()[0] == 2
    assert out.logprobs[0] == out.top_logprobs[0, 0]
    out = Sampler(rule)(logits.clone(), [PlainRow(params=params, num_output_tokens=2)])
    assert out.token_ids.item() == 0  # from min_tokens on, EOS may come
    ignore = SamplingParams(temperature=0, min_tokens=1, stop_token_ids=[1], ignore_eos=True)
    assert Sampler(rule)(logits.clone(), [PlainRow(params=ignore)]).token_ids.item() == 0  # only the stop id is banned


def test_stop_rule_stops_exactly_where_it_stops_banning():
    """The sampler's ban and the scheduler's stop are one rule: the i-th output token (from 0) may
    stop the sequence exactly when it is not banned."""
    rule = StopRule(eos_token_ids=(0, 9))
    for params in (SamplingParams(min_tokens=3, stop_token_ids=[4]),
                   SamplingParams(ignore_eos=True, stop_token_ids=[4]), SamplingParams(min_tokens=1)):
        stopping = set(rule.stop_ids(params))
        assert stopping == set(params.stop_token_ids) | (set() if params.ignore_eos else {0, 9})
        for index in range(5):
            for token in range(10):
                banned = token in rule.banned_ids(params, index)
                assert rule.stops(params, index, token) == (token in stopping and not banned)
                assert banned == (token in stopping and index < params.min_tokens)


def test_a_row_whose_own_data_fails_names_its_row():
    rows = [PlainRow(params=SamplingParams(temperature=0)) for _ in range(3)]
    rows[1].params.allowed_token_ids = [99]  # past the 8 logits; add_request would have refused it
    with pytest.raises(SequenceError) as info:
        Sampler()(torch.randn(3, 8), rows)
    assert info.value.seq is rows[1] and isinstance(info.value.cause, IndexError)


@pytest.mark.parametrize("bad", [
    dict(n=0), dict(n=True), dict(max_tokens=0), dict(max_tokens=-3), dict(max_tokens=2.0), dict(temperature=-1),
    dict(temperature=float("nan")), dict(temperature=float("inf")), dict(temperature=10**400),
    dict(temperature="1"), dict(top_p=0), dict(top_p=1.5), dict(top_p=float("nan")), dict(top_k=-2),
    dict(top_k=1e23), dict(min_p=2), dict(min_p=float("nan")), dict(seed=1.5), dict(logprobs=50),
    dict(min_tokens=5, max_tokens=2), dict(stop=[""]), dict(stop=[3]), dict(stop_token_ids=[-1]),
    dict(stop_token_ids=[1.0]), dict(stop_token_ids=5), dict(allowed_token_ids=[]), dict(ignore_eos="yes")])
def test_bad_sampling_params_are_rejected(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


def test_parameters_naming_ids_outside_the_vocabulary_are_rejected():
    SamplingParams(stop_token_ids=[99], allowed_token_ids=[0, 99], top_k=100).check_vocab(100)
    for bad in (dict(stop_token_ids=[100]), dict(allowed_token_ids=[3, 10**6]), dict(top_k=101)):
        with pytest.raises(ValueError, match="vocabulary size 100"):
            SamplingParams(**bad).check_vocab(100)


def test_allowed_token_ids_constrain_sampling():
    logits = torch.randn(4, 50)
    allowed = [3, 7, 11]
    rows = [PlainRow(params=SamplingParams(temperature=t, allowed_token_ids=allowed, seed=i), seed=i)
            for i, t in enumerate([0, 0.5, 1.0, 2.0])]
    out = Sampler()(logits.clone(), rows)
    assert set(out.token_ids.tolist()) <= set(allowed)
    assert out.token_ids[0] == max(allowed, key=lambda t: logits[0, t])
