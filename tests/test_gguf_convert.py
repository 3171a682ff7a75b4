"""Tests for GGUF -> Hugging Face conversion and the embedded SmolLM2 model cache."""

import functools
import time

import gguf
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from models.embedded import embedded_model_dir, locate_embedded_gguf
from models.errors import ModelLoadError
from models.gguf_convert import convert_gguf_to_hf_dir

TINY_HIDDEN, TINY_FFN, TINY_HEADS, TINY_KV_HEADS, TINY_VOCAB = 8, 16, 2, 1, 16


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A fresh cache so the suite never depends on a conversion left by an earlier run."""
    return tmp_path_factory.mktemp("switchyard-cache")


@pytest.fixture(scope="module")
def converted_dir(cache_dir):
    """The embedded model, converted once (cold) for the whole module."""
    return embedded_model_dir(cache_dir=cache_dir)


def _tiny_llama_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    head_dim = TINY_HIDDEN // TINY_HEADS
    # numpy [out, in] becomes ggml's [in, out], exactly as llama.cpp writes real models.
    shapes = {
        "token_embd.weight": (TINY_VOCAB, TINY_HIDDEN),
        "output_norm.weight": (TINY_HIDDEN,),
        "blk.0.attn_q.weight": (TINY_HEADS * head_dim, TINY_HIDDEN),
        "blk.0.attn_k.weight": (TINY_KV_HEADS * head_dim, TINY_HIDDEN),
        "blk.0.attn_v.weight": (TINY_KV_HEADS * head_dim, TINY_HIDDEN),
        "blk.0.attn_output.weight": (TINY_HIDDEN, TINY_HEADS * head_dim),
        "blk.0.ffn_gate.weight": (TINY_FFN, TINY_HIDDEN),
        "blk.0.ffn_up.weight": (TINY_FFN, TINY_HIDDEN),
        "blk.0.ffn_down.weight": (TINY_HIDDEN, TINY_FFN),
        "blk.0.attn_norm.weight": (TINY_HIDDEN,),
        "blk.0.ffn_norm.weight": (TINY_HIDDEN,),
    }
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _write_gguf(path, arch: str, tensors: dict[str, np.ndarray], llama_metadata: bool) -> None:
    writer = gguf.GGUFWriter(path, arch)
    if llama_metadata:
        writer.add_block_count(1)
        writer.add_context_length(32)
        writer.add_embedding_length(TINY_HIDDEN)
        writer.add_feed_forward_length(TINY_FFN)
        writer.add_head_count(TINY_HEADS)
        writer.add_head_count_kv(TINY_KV_HEADS)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_freq_base(10000.0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_weights_match_transformers_gguf_loader(converted_dir, monkeypatch):
    gguf_path = locate_embedded_gguf()
    # transformers rebuilds the same tensor-name map for each of the model's ~400 modules (seconds
    # of the test's time); the map depends only on its arguments, so one build serves them all.
    monkeypatch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))
    reference = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    expected = reference.state_dict()
    ours = load_file(converted_dir / "model.safetensors")

    # lm_head is tied to the embedding, so only the reference state dict lists it.
    assert set(ours) == set(expected) - {"lm_head.weight"}
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32
        # Identical dequantization, so any difference (e.g. a wrong q/k row order) is a bug.
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)

    loaded = AutoConfig.from_pretrained(converted_dir)
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "vocab_size",
                  "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(loaded, field) == getattr(reference.config, field), field
    assert loaded.rope_parameters["rope_theta"] == 100000.0
    assert loaded.rms_norm_eps == 1e-5


def test_converted_model_answers_chat_prompt(converted_dir):
    tokenizer = AutoTokenizer.from_pretrained(converted_dir)
    model = LlamaForCausalLM.from_pretrained(converted_dir)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")

    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    assert "Paris" in answer


def test_saved_tokenizer_has_gguf_specials_and_chat_template(converted_dir):
    tokenizer = AutoTokenizer.from_pretrained(converted_dir)

    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", 2)
    assert tokenizer.model_max_length == 8192
    # SmolLM2's GGUF sets add_bos_token=false; the chat template supplies <|im_start|>.
    assert tokenizer("Hello").input_ids[0] != tokenizer.bos_token_id
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    generation = transformers.GenerationConfig.from_pretrained(converted_dir)
    assert (generation.bos_token_id, generation.eos_token_id) == (1, 2)


def test_warm_call_is_fast_and_honours_env_cache(converted_dir, cache_dir, monkeypatch):
    monkeypatch.setenv("SWITCHYARD_CACHE", str(cache_dir))
    start = time.perf_counter()
    again = embedded_model_dir()
    elapsed = time.perf_counter() - start

    assert again == converted_dir
    assert elapsed < 0.5
    assert [path.name for path in cache_dir.iterdir()] == [converted_dir.name]


def test_missing_file_raises(tmp_path):
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(ModelLoadError, match="nowhere.gguf"):
        convert_gguf_to_hf_dir(missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_raises(tmp_path, damage):
    broken = tmp_path / f"{damage}.gguf"
    if damage == "truncated":
        # A tiny model keeps this fast; cutting the tail is what an interrupted download does.
        _write_gguf(broken, "llama", _tiny_llama_tensors(), llama_metadata=True)
        broken.write_bytes(broken.read_bytes()[:-64])
    elif damage == "garbage":
        broken.write_bytes(b"definitely not a gguf file" * 100)
    else:
        broken.write_bytes(b"")

    with pytest.raises(ModelLoadError, match=f"{damage}.gguf"):
        convert_gguf_to_hf_dir(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_raises(tmp_path):
    path = tmp_path / "gpt2.gguf"
    _write_gguf(path, "gpt2", {"token_embd.weight": np.zeros((4, 2), np.float32)}, llama_metadata=False)
    with pytest.raises(ModelLoadError, match=r"gpt2\.gguf.*unsupported GGUF architecture 'gpt2'"):
        convert_gguf_to_hf_dir(path, tmp_path / "out")


def test_missing_metadata_key_raises(tmp_path):
    path = tmp_path / "bare.gguf"
    _write_gguf(path, "llama", _tiny_llama_tensors(), llama_metadata=False)
    with pytest.raises(ModelLoadError, match=r"bare\.gguf.*missing GGUF metadata key 'llama\.embedding_length'"):
        convert_gguf_to_hf_dir(path, tmp_path / "out")


def test_unknown_tensor_name_raises(tmp_path):
    path = tmp_path / "odd.gguf"
    tensors = _tiny_llama_tensors() | {"blk.0.mystery.weight": np.zeros(TINY_HIDDEN, np.float32)}
    _write_gguf(path, "llama", tensors, llama_metadata=True)
    with pytest.raises(ModelLoadError, match=r"odd\.gguf.*unknown tensor name 'blk\.0\.mystery\.weight'"):
        convert_gguf_to_hf_dir(path, tmp_path / "out")


def test_existing_target_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        convert_gguf_to_hf_dir(tmp_path / "any.gguf", tmp_path / "out")


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, "llama", _tiny_llama_tensors(), llama_metadata=True)
    target_parent = tmp_path / "models"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    # The tokenizer is built after the weights are written, so this interrupts mid-conversion.
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf_to_hf_dir(path, target_parent / "tiny")
    assert list(target_parent.iterdir()) == []


def test_concurrent_converter_that_finishes_first_wins(tmp_path, monkeypatch, converted_dir):
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, "llama", _tiny_llama_tensors(), llama_metadata=True)
    target = tmp_path / "models" / "tiny"
    real_tokenizer = AutoTokenizer.from_pretrained(converted_dir)

    def rival_finishes_first(*args, **kwargs):
        target.mkdir()
        (target / "winner").write_text("rival")
        return real_tokenizer

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", rival_finishes_first)
    assert convert_gguf_to_hf_dir(path, target) == target
    assert sorted(p.name for p in target.iterdir()) == ["winner"]
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]
