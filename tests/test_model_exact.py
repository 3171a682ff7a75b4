"""Acceptance 1: our decoder's logits equal transformers' on tiny random Qwen3, Qwen2 and Llama
configs, for a batched varlen prefill, a chunked prefill and decodes over a shuffled paged cache."""

import random

import pytest
import torch
import transformers

from models.attention import TorchReferenceBackend
from models.config import ModelConfig
from models.decoder import DecoderModel
from models.rows import PlainRow
from models.runner import ModelRunner

TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rms_norm_eps=1e-6, rope_theta=10000.0)
ARCHS = {
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=32, tie_word_embeddings=True),
    "qwen2": lambda: transformers.Qwen2Config(**TINY, tie_word_embeddings=False),
    "llama": lambda: transformers.LlamaConfig(**TINY, tie_word_embeddings=True),
}
BLOCK = 4


def _models(arch):
    torch.manual_seed(0)
    hf_cfg = ARCHS[arch]()
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg, torch_dtype=torch.float32).eval()
    if arch == "qwen2":  # random biases, so a forgotten bias would show
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    cfg = ModelConfig.from_hf_dict(hf_cfg.to_dict())
    ours = DecoderModel(cfg, TorchReferenceBackend(), max_positions=512)
    ours.load_weights(hf.state_dict().items())
    return hf, ours.eval()


def _grow(seq, free_blocks):
    while len(seq.block_table) * BLOCK < seq.num_tokens:
        seq.block_table.append(free_blocks.pop())


def _step(runner, seqs, ns):
    input_ids, positions, meta, _ = runner.prepare(seqs, ns)
    with torch.inference_mode():
        logits = runner.model.compute_logits(runner.model(input_ids, positions, runner.kv_caches, meta))
    for s, n in zip(seqs, ns):
        s.num_computed_tokens += n
    return logits, meta


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_match_transformers(arch):
    hf, ours = _models(arch)
    runner = ModelRunner(ours, block_size=BLOCK, kv_dtype=torch.float32, device=torch.device("cpu"))
    runner.allocate_kv_cache(64)
    free_blocks = list(range(64))
    random.Random(0).shuffle(free_blocks)  # non-contiguous block tables
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 13, 1, 22)]
    seqs = [PlainRow(list(p)) for p in prompts]
    for s in seqs:
        _grow(s, free_blocks)

    def reference(tokens):
        with torch.no_grad():
            return hf(torch.tensor([tokens])).logits[0]

    # Batched varlen prefill; the last prompt is split in two chunks across two steps.
    ns = [5, 13, 1, 9]
    logits, _ = _step(runner, seqs, ns)
    flat = torch.cat([reference(p)[:n] for p, n in zip(prompts, ns)])
    assert (logits - flat).abs().max().item() <= 1e-4
    logits, _ = _step(runner, seqs[3:], [13])
    assert (logits - reference(prompts[3])[9:]).abs().max().item() <= 1e-4

    # Several decode steps over the paged cache, one new token per sequence each time.
    for _ in range(5):
        for s in seqs:
            s.token_ids.append(int(torch.randint(0, 256, (1,), generator=gen)))
            _grow(s, free_blocks)
        logits, meta = _step(runner, seqs, [1] * len(seqs))
        assert meta.num_decodes == len(seqs)
        expected = torch.stack([reference(s.token_ids)[-1] for s in seqs])
        assert (logits - expected).abs().max().item() <= 1e-4


def test_mixed_decode_and_prefill_step():
    """Decodes and a prefill chunk in ONE forward give the same logits as separate runs."""
    hf, ours = _models("qwen3")
    runner = ModelRunner(ours, block_size=BLOCK, kv_dtype=torch.float32, device=torch.device("cpu"))
    runner.allocate_kv_cache(32)
    free_blocks = list(range(32))[::-1]
    a = PlainRow([1, 2, 3, 4, 5, 6])
    b = PlainRow(list(range(10, 30)))
    for s in (a, b):
        _grow(s, free_blocks)
    _step(runner, [a], [6])
    a.token_ids.append(7)
    _grow(a, free_blocks)
    logits, meta = _step(runner, [a, b], [1, 20])
    assert meta.num_decodes == 1
    with torch.no_grad():
        ref_a = hf(torch.tensor([a.token_ids])).logits[0, -1]
        ref_b = hf(torch.tensor([b.token_ids])).logits[0]
    assert (logits[0] - ref_a).abs().max() <= 1e-4
    assert (logits[1:] - ref_b).abs().max() <= 1e-4
