"""Acceptance 5: bad input raises a clear error and the engine keeps serving."""

import json
import shutil

import pytest

from models.errors import ModelLoadError
from models.sampler import SamplingParams
from scheduler.engine import EngineConfig, LLMEngine
from scheduler.llm import LLM
from scheduler.outputs import merge_outputs


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(str(tiny_model_dir), max_model_len=64)


def _serves(llm):
    out = llm.generate(["hello there"], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 5
    assert llm.engine.scheduler.block_manager.num_free_blocks == llm.engine.num_kv_blocks


@pytest.mark.parametrize("prompt, params, message", [
    ("", None, "prompt is empty"),
    ([], None, "prompt is empty"),
    ("word " * 80, None, "context limit is 64"),
    ([5] * 64, None, "context limit is 64"),
    ([1, 2, 10**9], None, "token ids must be integers in"),
    ([1, -4], None, "token ids must be integers in"),
])
def test_bad_prompts_are_rejected_and_engine_keeps_serving(llm, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        llm.generate([prompt], params)
    _serves(llm)


@pytest.mark.parametrize("params, priority, message", [
    # Issue 9's reproductions: each once failed every request in the same step.
    (SamplingParams(stop_token_ids=[1_000_000], min_tokens=2), 0, "stop_token_ids must be below the vocabulary size"),
    (SamplingParams(temperature=1, top_k=10**23), 0, "top_k must not exceed the vocabulary size"),
    (SamplingParams(allowed_token_ids=[5, 49152]), 0, "allowed_token_ids must be below the vocabulary size"),
    (SamplingParams(), float("nan"), "priority must be a finite number"),
])
def test_parameters_the_model_cannot_serve_are_rejected_and_change_nothing(llm, params, priority, message):
    """Valid on their own, but not for this model: add_request refuses them, queues nothing, and
    a request already running finishes exactly as it would have."""
    engine = llm.engine
    innocent = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    alone = llm.generate(["hello there"], innocent)[0].outputs[0].token_ids
    engine.add_request("innocent", "hello there", innocent)
    deltas = engine.step()
    with pytest.raises(ValueError, match=message):
        engine.add_request("bad", "hi", params, priority=priority)
    assert engine.abort_request("bad") is None  # nothing was queued under its id
    while engine.has_unfinished_requests():
        deltas += engine.step()
    assert {o.request_id for o in deltas} == {"innocent"}
    assert merge_outputs(deltas).outputs[0].token_ids == alone
    _serves(llm)


def test_duplicate_request_id_is_rejected(llm):
    engine = llm.engine
    engine.add_request("dup", "hi", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("dup", "hi again")
    engine.abort_request("dup")
    _serves(llm)


def test_unknown_model_path():
    with pytest.raises(ModelLoadError, match="not a model directory"):
        LLMEngine(EngineConfig(model="/nonexistent/model/dir"))
    with pytest.raises(ModelLoadError, match="downloading it from the hub failed"):
        LLMEngine(EngineConfig(model="no-such-owner/no-such-model"))


def test_corrupt_weight_file(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        LLMEngine(EngineConfig(model=str(broken)))


def test_truncated_weight_file(tiny_model_dir, tmp_path):
    broken = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, broken)
    data = (tiny_model_dir / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        LLMEngine(EngineConfig(model=str(broken)))


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture model_type='gpt2'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling type 'yarn' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"num_hidden_layers": 5}, "missing weights for"),
])
def test_unsupported_or_mismatched_config(tiny_model_dir, tmp_path, change, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(change)
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace("[", r"\[")):
        LLMEngine(EngineConfig(model=str(model)))


def test_dummy_load_needs_a_known_preset():
    with pytest.raises(ModelLoadError):
        LLMEngine(EngineConfig(model="Qwen/Qwen3-3B", load_format="dummy"))


def test_text_prompt_on_a_model_without_tokenizer(tiny_model_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, bare / name)
    llm = LLM(str(bare))
    with pytest.raises(ValueError, match="no tokenizer"):
        llm.generate(["text"])
    out = llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, ignore_eos=True, temperature=0))
    assert len(out[0].outputs[0].token_ids) == 3 and out[0].outputs[0].text == ""
