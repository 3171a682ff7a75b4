"""Switchyard on Modal: two engines in one container on 2x A100-80GB, behind the very app `python -m api` serves.

    modal deploy modal_deploy.py     # or ./deploy.sh; the URL ends in -model-completions.modal.run

The course's client POSTs {"prompt": ..., "max_tokens": 2048} to that bare URL, i.e. to `/`, which
the app routes to its completions handler. Settings are environment variables of the deploying
shell, forwarded into the container (which does not otherwise see that shell):

    SWITCHYARD_APP_NAME           the Modal app, and so the URL (default andrewid-system-1)
    SWITCHYARD_MODEL              large model, on cuda:0 (default Qwen/Qwen3-8B)
    SWITCHYARD_SMALL_MODEL        small model, on cuda:1 (default Qwen/Qwen3-1.7B; the large model's id
                                  here makes one engine serve both roles)
    SWITCHYARD_SERVED_MODEL_NAME  the responses' `model` (default: the app name)
    SWITCHYARD_POLICY             a local policy JSON file (tasks/policy.py), shipped with the app
    SWITCHYARD_ARGS               any further `python -m api` flags, e.g. "--max-num-seqs 256"
    SWITCHYARD_API_KEY            require 'Authorization: Bearer KEY' (the course's client sends none)

Hub weights download into a Modal Volume on the first start and are read from it afterwards.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import modal

if TYPE_CHECKING:
    from api.config import ServerConfig

DEFAULT_APP_NAME = "andrewid-system-1"
DEFAULT_MODEL = "Qwen/Qwen3-8B"
DEFAULT_SMALL_MODEL = "Qwen/Qwen3-1.7B"
FORWARDED = ("SWITCHYARD_APP_NAME", "SWITCHYARD_MODEL", "SWITCHYARD_SMALL_MODEL", "SWITCHYARD_SERVED_MODEL_NAME",
             "SWITCHYARD_POLICY", "SWITCHYARD_ARGS", "SWITCHYARD_API_KEY")

GPU = "A100-80GB:2"           # the course's hardware
MAX_INPUTS = 300              # the course's client keeps up to 300 requests in flight
SCALEDOWN_WINDOW_S = 600      # an idle container stays up 10 minutes, as the course asks
TIMEOUT_S = 1200              # per request; above the client's own 600 s, so the client gives up first
STARTUP_TIMEOUT_S = 1800      # a first start downloads ~20 GB of weights before loading them

CACHE_DIR = "/cache"
POLICY_PATH = "/root/switchyard_policy.json"  # where a SWITCHYARD_POLICY file lands in the container
ROOT = Path(__file__).resolve().parent


def container_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The deploying shell's SWITCHYARD_* settings as the container sees them: the policy file is
    shipped to POLICY_PATH, so its variable points there."""
    env = {k: environ[k] for k in FORWARDED if k in environ}
    if "SWITCHYARD_POLICY" in env:
        env["SWITCHYARD_POLICY"] = POLICY_PATH
    return env


def server_config(environ: Mapping[str, str]) -> ServerConfig:
    """The server the container runs: large model on cuda:0, small on cuda:1, the course's system
    name as the served model name; SWITCHYARD_ARGS come last, so they override any of these."""
    from api.config import parse_args  # imports torch: only where the engines run

    app_name = environ.get("SWITCHYARD_APP_NAME", DEFAULT_APP_NAME)
    argv = ["--model", environ.get("SWITCHYARD_MODEL", DEFAULT_MODEL),
            "--small-model", environ.get("SWITCHYARD_SMALL_MODEL", DEFAULT_SMALL_MODEL),
            "--device", "cuda:0", "--small-device", "cuda:1",
            "--served-model-name", environ.get("SWITCHYARD_SERVED_MODEL_NAME", app_name)]
    if "SWITCHYARD_POLICY" in environ:
        argv += ["--policy", environ["SWITCHYARD_POLICY"]]
    return parse_args(argv + shlex.split(environ.get("SWITCHYARD_ARGS", "")))


# This checkout's packages over its dependencies. Not the `cpu` extra's CPU torch: PyTorch's CUDA 12.8
# build (with its Triton), the version the GPU benchmarks ran (BENCHMARKS.md); a CUDA 12 build also
# needs an older driver than PyPI's default CUDA 13 one.
image = (
    modal.Image.debian_slim(python_version="3.12")
    .pip_install("torch==2.11.0", index_url="https://download.pytorch.org/whl/cu128")
    .pip_install_from_pyproject(str(ROOT / "pyproject.toml"))
    .env({"HF_HOME": f"{CACHE_DIR}/huggingface"})
    .add_local_python_source("api", "scheduler", "models", "kv_cache", "tasks")
)
if "SWITCHYARD_POLICY" in os.environ:
    image = image.add_local_file(os.environ["SWITCHYARD_POLICY"], POLICY_PATH)
hf_cache = modal.Volume.from_name("switchyard-hf-cache", create_if_missing=True)

app = modal.App(os.environ.get("SWITCHYARD_APP_NAME", DEFAULT_APP_NAME))


# max_containers=1: the course grants one pair of A100s; a second container would be a second pair
# (and a second cold start in the middle of the load).
@app.cls(image=image, gpu=GPU, volumes={CACHE_DIR: hf_cache}, env=container_env(os.environ),
         scaledown_window=SCALEDOWN_WINDOW_S, timeout=TIMEOUT_S, startup_timeout=STARTUP_TIMEOUT_S,
         max_containers=1)
@modal.concurrent(max_inputs=MAX_INPUTS)
class Model:
    """One container: both engines, each stepping on its own thread and CUDA stream."""

    @modal.enter()
    def start(self) -> None:
        """Load both engines before the first request (on CUDA each warms up in its constructor)."""
        from api.launch import build_service

        self.config = server_config(os.environ)
        self.service = build_service(self.config)
        hf_cache.commit()  # weights downloaded by this start stay, even if the container is killed later

    @modal.asgi_app()
    def completions(self):
        """The Starlette app of `python -m api`, over the engines loaded at start."""
        from api.launch import app_for

        return app_for(self.service, self.config)
