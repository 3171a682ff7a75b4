"""Data from one request can never fail another (issue 9): an exception tied to one sequence, while
sampling its row or detokenizing its token, fails that request alone — finish_reason "error", the
error on its output, its blocks freed — and every other request in the same steps produces exactly
the tokens it produces alone, with steps overlapped or not."""

import collections

import pytest

from models.sampler import Sampler, SamplingParams
from scheduler.detokenizer import IncrementalDetokenizer
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.outputs import merge_outputs
from tests.engine_runs import assert_pool_clean, run_prompts

PROMPTS = ["The weather today is", "Graph search algorithms", "A short poem about rivers:", "1, 2, 3,"]
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
FAIL_AT = 3  # the victim's output token on which the injected fault fires


@pytest.fixture(scope="module")
def solo(tiny_model_dir):
    """Each prompt's tokens when it runs alone."""
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir)))
    return [run_prompts(engine, [p], GREEDY)[0].token_ids for p in PROMPTS]


def _inject(monkeypatch, where: str, victim: SamplingParams) -> None:
    """Make the victim's sequences raise at their FAIL_AT-th output token, in the sampler or the detokenizer."""
    if where == "sampler":
        real = Sampler._constrain

        def constrain(self, logits, i, row):
            if row.params is victim and row.num_output_tokens == FAIL_AT:
                raise RuntimeError("injected sampler fault")
            real(self, logits, i, row)

        monkeypatch.setattr(Sampler, "_constrain", constrain)
    else:
        real_add, calls = IncrementalDetokenizer.add, collections.Counter()

        def add(self, token_id):
            if self.params is victim:
                calls[id(self)] += 1
                if calls[id(self)] == FAIL_AT:
                    raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenizer fault")
            return real_add(self, token_id)

        monkeypatch.setattr(IncrementalDetokenizer, "add", add)


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("where", ["sampler", "detokenizer"])
def test_a_failing_request_fails_alone(tiny_model_dir, solo, monkeypatch, where, overlap):
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir), async_scheduling=overlap))
    victim = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, n=2)
    _inject(monkeypatch, where, victim)
    engine.add_request("victim", PROMPTS[1], victim)
    deltas = collections.defaultdict(list)
    step = 0
    while engine.has_unfinished_requests():
        if step < len(PROMPTS):  # the others join one per step, so the fault hits mid-flight
            engine.add_request(f"r{step}", PROMPTS[step], GREEDY)
        for out in engine.step():
            deltas[out.request_id].append(out)
        step += 1

    failed = merge_outputs(deltas["victim"])
    assert failed.finished and [c.finish_reason for c in failed.outputs] == ["error", "error"]
    assert "injected" in failed.error
    assert all(len(c.token_ids) <= FAIL_AT for c in failed.outputs)
    assert [merge_outputs(deltas[f"r{i}"]).outputs[0].token_ids for i in range(len(PROMPTS))] == solo
    assert_pool_clean(engine)
    # The engine goes on serving as before.
    assert [o.token_ids for o in run_prompts(engine, PROMPTS, GREEDY, prefix="again")] == solo
    assert_pool_clean(engine)
