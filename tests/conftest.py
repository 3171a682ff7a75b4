"""Shared fixtures: a tiny random model directory that loads in a blink but has a real tokenizer."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton must know it is interpreting before anything imports it (transformers may, indirectly),
    # or the kernel tests fail with "Cannot call @triton.jit'd outside of the scope of a kernel".
    os.environ.setdefault("TRITON_INTERPRET", "1")

import transformers  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer random Qwen3 with SmolLM2's vocabulary size, tokenizer and chat template."""
    from bench.copy_tokenizer import copy_tokenizer  # imported here: GPU machines lack the embedded model
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=4096, tie_word_embeddings=True, eos_token_id=2)
    out = tmp_path_factory.mktemp("tiny-qwen3")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    copy_tokenizer(out)
    return out
