"""Quantization (models/quantization.py): each quantized linear against the computation it stands for
(its dequantized weight, and bitsandbytes' own layers), the error each mode adds, the bytes stored,
which layers are replaced, and quantized engines serving a batch end to end on the tiny random model.

On this CPU: bitsandbytes' CPU backend runs LLM.int8 and NF4, and torch 2.13's CPU build runs
`torch._scaled_mm` with row-wise scales, so every mode runs; a mode the machine cannot run (no
bitsandbytes, fp8 below sm89) skips with the reason. The `cuda` cases run on a GPU only.
"""

import pytest
import torch
from torch import nn

from bench.quantization import next_token_logits
from models.quantization import (FP8_MAX, MODES, FP8Linear, Int8Linear, NF4Linear, QuantizedLinear,
                                 check_quantization, quantize_rows_fp8, weight_bytes)
from models.sampler import SamplingParams
from scheduler.llm import LLM
from tests.engine_runs import assert_pool_clean

QUANTIZED = [m for m in MODES if m != "none"]
KIND = {"bnb-8bit": Int8Linear, "bnb-4bit": NF4Linear, "fp8": FP8Linear}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _why_not(mode: str, device: str) -> str | None:
    """Why `mode` cannot run on `device` here, or None when it can."""
    if device == "cuda" and not torch.cuda.is_available():
        return "needs CUDA"
    try:
        check_quantization(mode, torch.device(device))
    except ValueError as e:
        return str(e)
    return None


def _skip_unless_runnable(mode: str, device: str) -> None:
    reason = _why_not(mode, device)
    if reason:
        pytest.skip(reason)


def _layer(out_features=192, in_features=256, bias=True, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():  # HF's initialisation scale, and a bias big enough to matter
        linear.weight.copy_(torch.randn(out_features, in_features, generator=gen) * 0.02)
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=gen) * 0.1)
    return linear.to(device=device, dtype=dtype).eval()


def _inputs(rows=9, features=256, dtype=torch.float32, device="cpu", seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=gen).clamp(-4, 4)  # below LLM.int8's outlier threshold of 6
    return x.to(device=device, dtype=dtype)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float32."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _kernel_reference(layer: QuantizedLinear, x: torch.Tensor) -> torch.Tensor:
    """What the layer's kernel computes, in float32 from its stored integers and scales: the
    dequantized weight against the input quantized the way the mode quantizes activations."""
    if isinstance(layer, Int8Linear):  # per-token absmax int8 of the fp16 input, no outliers here
        x16 = x.to(torch.float16).float()
        absmax = x16.abs().amax(-1, keepdim=True)
        xq = torch.round(x16 * (127.0 / absmax))
        out = (xq @ layer.weight.float().t()) * (absmax * layer.weight_scale.float()[None, :] / 127.0**2)
    elif isinstance(layer, FP8Linear):
        values, scale = quantize_rows_fp8(x)
        out = (values.float() * scale) @ layer.dequantized_weight().t()
    else:  # NF4 quantizes only the weight: the input goes in as it is
        out = x.float() @ layer.dequantized_weight().t()
    return out if layer.bias is None else out + layer.bias.float()


# Tolerances, relative to the output's norm. KERNEL: against the exact reference above, so only
# output rounding and accumulation order differ (LLM.int8 writes fp16 on CUDA, _scaled_mm bf16),
# plus BF16_OUTPUT when the layer computes in bf16. ERROR: the mode's quantization error against
# the unquantized layer, for weights of HF's scale and unit activations.
KERNEL = {"bnb-8bit": 1e-3, "bnb-4bit": 1e-4, "fp8": 5e-3}
BF16_OUTPUT = 5e-3
ERROR = {"bnb-8bit": 0.015, "bnb-4bit": 0.12, "fp8": 0.06}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", QUANTIZED)
def test_quantized_linear_matches_its_reference_and_bounds_its_error(mode, dtype, device):
    _skip_unless_runnable(mode, device)
    linear = _layer(dtype=dtype, device=device)
    layer = KIND[mode](linear)
    x = _inputs(dtype=dtype, device=device)
    with torch.inference_mode():
        out, exact = layer(x), linear(x)
    assert out.shape == exact.shape and out.dtype == dtype
    assert _relative(out, _kernel_reference(layer, x)) < KERNEL[mode] + (BF16_OUTPUT if dtype == torch.bfloat16 else 0)
    error = _relative(out, exact)
    assert 0 < error < ERROR[mode], error  # > 0: the weights really are quantized


@pytest.mark.parametrize("device", DEVICES)
def test_int8_keeps_outlier_columns_in_16_bit(device):
    _skip_unless_runnable("bnb-8bit", device)
    linear = _layer(device=device)
    x = _inputs(device=device)
    x[:, 7] = 40.0  # one outlier feature, as large models grow them: it would flatten every row's int8 grid
    with torch.inference_mode():
        exact = linear(x)
        llm_int8 = _relative(Int8Linear(linear)(x), exact)
        plain_int8 = _relative(Int8Linear(linear, threshold=0.0)(x), exact)
    assert llm_int8 < ERROR["bnb-8bit"] and llm_int8 < plain_int8 / 3, (llm_int8, plain_int8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bitsandbytes_layers_compute_what_bitsandbytes_own_modules_compute(dtype):
    bnb = pytest.importorskip("bitsandbytes")
    linear = _layer(dtype=dtype)
    x = _inputs(dtype=dtype)
    x[:, 3] = 9.0  # through LLM.int8's outlier path too
    int8 = bnb.nn.Linear8bitLt(256, 192, bias=True, has_fp16_weights=False, threshold=6.0)
    int8.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    int8.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    nf4 = bnb.nn.Linear4bit(256, 192, bias=True, compute_dtype=dtype, compress_statistics=False, quant_type="nf4")
    nf4.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4",
                                   compress_statistics=False, blocksize=NF4Linear.BLOCKSIZE)
    nf4.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    nf4 = nf4.to("cpu")  # Params4bit quantizes when moved
    with torch.inference_mode():
        assert torch.equal(Int8Linear(linear)(x), int8.eval()(x))
        # Left in training mode: in eval mode on a CPU, Linear4bit repacks its weight for an AVX512-BF16
        # kernel of its own, which rounds differently; on a GPU both take the path NF4Linear takes.
        assert torch.equal(NF4Linear(linear)(x), nf4(x))


def test_fp8_row_quantization_is_exact_where_it_can_be():
    x = torch.tensor([[1.0, -2.0, 0.5, 448.0], [0.0, 0.0, 0.0, 0.0], [3.0, 3.0, -3.0, 1.5]])
    values, scale = quantize_rows_fp8(x)
    assert values.dtype == torch.float8_e4m3fn and scale.shape == (3, 1)
    # Each row's absmax maps onto FP8_MAX; values on e4m3's grid come back exactly; a zero row stays zero.
    assert torch.equal(values.float().abs().amax(-1), torch.tensor([FP8_MAX, 0.0, FP8_MAX]))
    assert torch.equal(values.float() * scale, x)


def test_fp8_refuses_dimensions_scaled_mm_cannot_take():
    with pytest.raises(ValueError, match="multiples of 16"):
        FP8Linear(nn.Linear(24, 32))


@pytest.mark.parametrize("mode", QUANTIZED)
def test_stored_bytes(mode):
    _skip_unless_runnable(mode, "cpu")
    out_f, in_f = 192, 256
    layer = KIND[mode](_layer(out_f, in_f, bias=False, dtype=torch.bfloat16))
    expected = {"bnb-8bit": out_f * in_f + 4 * out_f,                                  # int8, fp32 row scales
                "bnb-4bit": out_f * in_f // 2 + 4 * out_f * in_f // NF4Linear.BLOCKSIZE,  # 2 a byte, fp32 absmax
                "fp8": out_f * in_f + 4 * out_f}[mode]
    assert weight_bytes(layer) == expected


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="quantization must be one of"):
        check_quantization("int3", torch.device("cpu"))


@pytest.mark.parametrize("mode", QUANTIZED)
def test_only_the_decoder_layers_projections_are_replaced(mode, tiny_model_dir):
    _skip_unless_runnable(mode, "cpu")
    from models.attention import TorchReferenceBackend
    from models.loader import load_model
    plain, cfg, _, _ = load_model(str(tiny_model_dir), dtype=torch.float32, device=torch.device("cpu"),
                                  backend=TorchReferenceBackend())
    model, _, _, _ = load_model(str(tiny_model_dir), dtype=torch.float32, device=torch.device("cpu"),
                                backend=TorchReferenceBackend(), quantization=mode)
    for layer in model.layers:
        kinds = [type(m) for m in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                                   layer.mlp.down_proj)]
        assert kinds == [KIND[mode]] * 4
        assert not any(isinstance(m, nn.Linear) for m in layer.modules())
    assert type(model.embed_tokens) is nn.Embedding and model.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(model.embed_tokens.weight, plain.embed_tokens.weight)
    projections = sum(p.numel() * 4 for n, p in plain.named_parameters() if n.startswith("layers.") and "proj" in n)
    saved = {"bnb-8bit": 0.7, "bnb-4bit": 0.8, "fp8": 0.7}[mode]  # of the float32 projections' bytes
    assert weight_bytes(model) < weight_bytes(plain) - saved * projections


PROMPTS = ["The capital of France is", "def quicksort(xs):", "Once upon a time, in a kingdom by the sea,",
           "2 + 2 =", "Translate to French: good morning", "A list of primes: 2, 3, 5,"]
# The whole model's next-token logits against the unquantized model's: two layers of error on top
# of the per-layer ERROR above.
MODEL_ERROR = {"bnb-8bit": 0.03, "bnb-4bit": 0.2, "fp8": 0.1}  # measured: 0.012, 0.13, 0.057 at most


@pytest.fixture(scope="module")
def unquantized_logits(tiny_model_dir):
    """device -> {prompt: the unquantized model's next-token logits there, on the CPU}."""
    cache = {}

    def on(device: str) -> dict:
        if device not in cache:
            engine = LLM(str(tiny_model_dir), device=device, num_kv_blocks=64).engine
            cache[device] = {p: next_token_logits(engine, engine.tokenize(p)).cpu() for p in PROMPTS}
        return cache[device]

    return on


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", QUANTIZED)
def test_quantized_engine_serves_a_batch(mode, device, tiny_model_dir, unquantized_logits):
    _skip_unless_runnable(mode, device)
    llm = LLM(str(tiny_model_dir), quantization=mode, device=device, num_kv_blocks=64)
    engine = llm.engine
    assert isinstance(engine.model.layers[0].mlp.down_proj, KIND[mode])
    lengths = [3, 17, 8, 1, 12, 5]
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, logprobs=1) for n in lengths]
    outs = llm.generate(PROMPTS, params)
    for out, n in zip(outs, lengths):
        choice = out.outputs[0]
        assert out.finished and choice.finish_reason == "length" and len(choice.token_ids) == n
        assert all(0 <= t < engine.model_config.vocab_size for t in choice.token_ids)
    assert_pool_clean(engine)
    eps = torch.finfo(engine.config.resolved_dtype()).eps
    for prompt, out in zip(PROMPTS, outs):
        logits = next_token_logits(engine, engine.tokenize(prompt)).cpu()
        # The batched run sampled its first token from these logits, up to batching's rounding: a
        # GEMM of another shape may round each logit differently in the model's dtype (bf16 on CUDA:
        # an H200 run differed by 0.0039 in a logprob of -10.1), so the band is a few of its ulps.
        rounding = max(1e-3, 4 * eps * logits.abs().max().item())
        first, logprob = out.outputs[0].token_ids[0], out.outputs[0].logprobs[0][0]
        assert abs(torch.log_softmax(logits, -1)[first].item() - logprob) < rounding
        assert logits[first] >= logits.max() - rounding  # greedy
        error = _relative(logits, unquantized_logits(device)[prompt])
        assert 0 < error < MODEL_ERROR[mode], (prompt, error)


_BLOCKS_AND_WEIGHTS = """
import json, sys
from scheduler.llm import LLM
from models.quantization import weight_bytes
# A small step budget keeps the activation peak, which differs by mode, small beside the weights.
llm = LLM("Qwen/Qwen3-0.6B", load_format="dummy", quantization=sys.argv[1], enforce_eager=True,
          gpu_memory_utilization=0.5, max_model_len=4096, max_num_batched_tokens=1024)
print(json.dumps([llm.engine.num_kv_blocks, weight_bytes(llm.engine.model)]))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", QUANTIZED)
def test_kv_cache_gets_the_memory_the_weights_free(mode):
    """On the GPU the KV budget is measured after quantization: the blocks grow by about the bytes saved.

    Each mode starts in a process of its own on an empty GPU (as bench.quantization does): measured one
    after the other in one process, the first engine's freed memory had not all returned to the driver
    and the second engine's budget came out smaller (H200, 2026-12-03)."""
    _skip_unless_runnable(mode, "cuda")
    import json
    import subprocess
    import sys
    from pathlib import Path

    from models.config import ModelConfig, preset_config
    from models.kv_tensors import bytes_per_block

    def blocks_and_weights(quantization):
        done = subprocess.run([sys.executable, "-c", _BLOCKS_AND_WEIGHTS, quantization], capture_output=True,
                              text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    blocks, weights = blocks_and_weights("none")
    q_blocks, q_weights = blocks_and_weights(mode)
    block_bytes = bytes_per_block(ModelConfig.from_hf_dict(preset_config("Qwen/Qwen3-0.6B")), 16, torch.bfloat16)
    assert q_weights < weights
    # Most of what the weights freed reaches the cache (activation peaks differ a little by mode).
    assert (q_blocks - blocks) * block_bytes > 0.7 * (weights - q_weights), (blocks, q_blocks, weights, q_weights)


def test_command_line_takes_the_mode(tiny_model_dir, capsys):
    from scheduler.__main__ import main

    _skip_unless_runnable("fp8", "cuda" if torch.cuda.is_available() else "cpu")
    assert main(["--model", str(tiny_model_dir), "--prompt", "Hello", "--max-tokens", "3",
                 "--quantization", "fp8"]) == 0
    assert "[3 tokens, finish_reason=length]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_model_dir), "--prompt", "Hello", "--quantization", "int3"])



@pytest.mark.parametrize("mode", QUANTIZED)
def test_a_quantized_layer_moves_with_its_state(mode):
    """Moving a quantized layer's tensors (quantize_model moves them out and back to repack them on
    CUDA) keeps what it computes: new buffers, and for NF4 the kernel's state reads them."""
    _skip_unless_runnable(mode, "cpu")
    layer = KIND[mode](_layer())
    x = _inputs()
    before = layer(x)
    old_weight = layer.weight
    layer._apply(torch.clone)  # what .to(another device) does: every tensor replaced
    assert layer.weight is not old_weight
    if mode == "bnb-4bit":
        assert layer.quant_state.absmax is layer.absmax
    assert torch.equal(layer(x), before)
