"""Device placement is checked before anything loads: a missing GPU is named, not a CUDA error."""

import time

import pytest
import torch

from scheduler.engine import EngineConfig


@pytest.fixture
def one_gpu(monkeypatch):
    """This machine as one with a single GPU visible (only existence is asked of it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_a_second_gpu_that_is_not_there(one_gpu):
    assert EngineConfig(device="cuda:0").resolved_device() == torch.device("cuda:0")
    assert EngineConfig(device="cuda").resolved_device() == torch.device("cuda")
    with pytest.raises(ValueError, match=r"device cuda:1 does not exist: this machine has 1 GPU \(cuda:0\)"):
        EngineConfig(device="cuda:1").resolved_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_cuda_asked_of_a_machine_without_it():
    with pytest.raises(ValueError, match="device cuda:1: CUDA is not available on this machine"):
        EngineConfig(device="cuda:1").resolved_device()


@pytest.mark.parametrize("name,message", [("gpu1", "Invalid device string"), ("mps", "only cpu and cuda")])
def test_devices_we_do_not_run_on(name, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(device=name).resolved_device()


def test_server_names_the_missing_small_device_before_loading(one_gpu, tiny_model_dir, capsys):
    """`python -m api ... --small-device cuda:1` on a one-GPU machine: exit 2 with the reason, at once
    (the small engine, built first, is refused before any weights load)."""
    from api.__main__ import main

    start = time.monotonic()
    code = main(["--model", str(tiny_model_dir), "--small-model", "Qwen/Qwen3-1.7B", "--load-format", "dummy",
                 "--small-device", "cuda:1", "--port", "0"])
    assert code == 2
    assert "error: device cuda:1 does not exist: this machine has 1 GPU (cuda:0)" in capsys.readouterr().err
    assert time.monotonic() - start < 10
