"""Which attention backend a name gives, and the errors for names that cannot run here."""

import pytest

from models.attention import TorchReferenceBackend, get_backend
from models.attention import flash_backend


def test_auto_off_cuda_is_the_reference():
    assert isinstance(get_backend("auto", "cpu"), TorchReferenceBackend)
    assert isinstance(get_backend("torch", "cpu"), TorchReferenceBackend)


@pytest.mark.parametrize("name", ["cudnn", "triton:", ":flash", "triton:torch", "flash:triton:flash"])
def test_unknown_names_list_the_choices(name):
    with pytest.raises(ValueError, match="available: auto, torch, triton, flash"):
        get_backend(name, "cuda")


@pytest.mark.parametrize("name", ["flash", "triton:flash", "flash:triton"])
def test_flash_where_it_cannot_run_says_why(name, monkeypatch):
    monkeypatch.setattr(flash_backend, "flash_unavailable_reason", lambda *_: "needs compute capability 9.0")
    with pytest.raises(ValueError, match=f"attention backend '{name}': needs compute capability 9.0"):
        get_backend(name, "cuda")
    with pytest.raises(ValueError, match="needs CUDA"):
        get_backend(name, "cpu")


def test_phases_are_picked_by_name():
    pytest.importorskip("triton")
    backend = get_backend("triton:triton", "cuda")
    assert backend.name == "triton"
    assert (backend.decode.__name__, backend.prefill.__name__) == ("triton_decode", "triton_prefill")


def test_prefill_kernel_picked_by_the_steps_work():
    """by_work counts each prefill chunk's pairs (cached prefix plus causal triangle), decides once
    per step and skips the decode rows."""
    import torch

    from models.attention.metadata import AttentionMetadata
    from models.attention.paged import by_work, prefill_pairs

    # one decode (ignored), a fresh 4-token prompt (10 pairs), a 3-token chunk after 5 cached (15 + 6)
    meta = AttentionMetadata(slot_mapping=torch.zeros(8), query_start_loc=torch.zeros(4), seq_lens=torch.zeros(3),
                             block_tables=torch.zeros(3, 1), num_decodes=1, max_query_len=4, max_seq_len=100,
                             query_start_loc_cpu=[0, 1, 5, 8], seq_lens_cpu=[100, 4, 8])
    assert prefill_pairs(meta) == 10 + 21
    calls = []
    pick = by_work(lambda *a: calls.append("small"), lambda *a: calls.append("large"), min_pairs=31)
    pick(None, None, None, meta, 1.0, None)
    meta.seq_lens_cpu[2] = 1  # a later layer of the same step sees the same choice
    pick(None, None, None, meta, 1.0, None)
    meta2 = AttentionMetadata(**{**{f: getattr(meta, f) for f in meta.__slots__}, "scratch": {}})
    pick(None, None, None, meta2, 1.0, None)
    assert calls == ["large", "large", "small"]
