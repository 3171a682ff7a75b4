"""Acceptance 1 of issue 12: modal_deploy.py imports with the `modal` package and no account; its
settings are read back from the Modal objects (not the source text); and the app its `completions`
method returns, built by its own enter method, answers the course's request on `/` exactly as on
/v1/completions. Nothing here contacts Modal."""

import asyncio
import importlib
import os

import httpx
import pytest

modal = pytest.importorskip("modal")

import modal_deploy  # noqa: E402
from tests.test_course_client import course_prompts, greedy_policy  # noqa: E402


def _closure(fn) -> dict:
    """The variables a closure captured, by name."""
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))


def _service_function():
    """The (unhydrated) Modal function that serves every method of the Model class."""
    from modal._utils.async_utils import synchronizer
    return synchronizer._translate_in(modal_deploy.Model._get_class_service_function())


def test_app_settings_as_modal_holds_them():
    assert modal_deploy.app.name == os.environ.get("SWITCHYARD_APP_NAME", "andrewid-system-1")
    info = modal_deploy.Model._get_class_service_function().info()  # answered locally while unhydrated
    assert info.gpus == [("A100-80GB", 2)]
    assert info.concurrency_info.max_inputs == 300
    assert info.timeout >= 600 and info.startup_timeout >= info.timeout
    assert set(info.volumes) == {"/cache"} and info.volumes["/cache"].name == "switchyard-hf-cache"
    assert not info.volumes["/cache"].read_only
    assert info.method_names == ["completions"] and "completions" in info.method_details  # a web endpoint
    # modal 1.6's FunctionInfo leaves out the autoscaler: read the settings its loader sends to Modal.
    autoscaler = _closure(_service_function()._load)["autoscaler_settings"]
    assert autoscaler.scaledown_window == 600
    assert autoscaler.max_containers == 1


def test_image_keeps_a_cuda_torch_and_caches_weights_on_the_volume():
    """Every build step of the image, base first: the project's dependencies without the `cpu`
    extra's CPU torch pin, the Hugging Face cache on the mounted volume, the packages on top."""
    from modal._utils.async_utils import synchronizer
    steps, mounted, image = [], None, synchronizer._translate_in(modal_deploy.image)
    while image is not None:
        cells = _closure(image._load)
        if "mount" in cells:
            mounted = cells["mount"]
        if "dockerfile_function" in cells:
            steps += cells["dockerfile_function"]("2025.06").commands
        bases = list(cells.get("base_images", {}).values()) or [cells.get("base_image")]
        image = bases[0]
    build = "\n".join(steps)
    assert "torch==2.11.0 --index-url https://download.pytorch.org/whl/cu128" in build
    assert "torch==2.13.0" not in build and "transformers>=4.51" in build
    assert "ENV HF_HOME=/cache/huggingface" in build
    assert {"api", "scheduler", "models", "kv_cache", "tasks"} <= {e.module_name for e in mounted.entries}


def test_app_name_and_forwarded_settings_come_from_the_environment(monkeypatch, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    monkeypatch.setenv("SWITCHYARD_APP_NAME", "team-system-2")
    monkeypatch.setenv("SWITCHYARD_POLICY", str(policy))
    monkeypatch.setenv("SWITCHYARD_CACHE", str(tmp_path))  # a local path: not forwarded
    try:
        importlib.reload(modal_deploy)
        assert modal_deploy.app.name == "team-system-2"
        info = modal_deploy.Model._get_class_service_function().info()
        assert info.secrets == ["Secret.from_dict([SWITCHYARD_APP_NAME, SWITCHYARD_POLICY])"]
        assert modal_deploy.container_env(os.environ) == {"SWITCHYARD_APP_NAME": "team-system-2",
                                                          "SWITCHYARD_POLICY": modal_deploy.POLICY_PATH}
    finally:
        monkeypatch.undo()
        importlib.reload(modal_deploy)


def test_server_config_from_the_environment():
    config = modal_deploy.server_config({})
    assert (config.model, config.device) == ("Qwen/Qwen3-8B", "cuda:0")
    assert (config.small_model, config.small_device) == ("Qwen/Qwen3-1.7B", "cuda:1")
    assert config.served_model_name == "andrewid-system-1" and config.policy is None
    config = modal_deploy.server_config({"SWITCHYARD_APP_NAME": "team-system-3", "SWITCHYARD_MODEL": "Qwen/Qwen3-14B",
                                         "SWITCHYARD_POLICY": "/p.json", "SWITCHYARD_ARGS": "--max-num-seqs 64"})
    assert (config.model, config.served_model_name, config.policy) == ("Qwen/Qwen3-14B", "team-system-3", "/p.json")
    assert config.max_num_seqs == 64
    config = modal_deploy.server_config({"SWITCHYARD_APP_NAME": "a", "SWITCHYARD_SERVED_MODEL_NAME": "b",
                                         "SWITCHYARD_ARGS": "--device cpu --small-device cpu"})
    assert (config.served_model_name, config.device, config.small_device) == ("b", "cpu", "cpu")


class _Volume:
    """Stands in for the weights volume, whose commit() would call Modal."""

    def __init__(self):
        self.commits = 0

    def commit(self):
        self.commits += 1


def test_completions_app_answers_the_course_request_on_root(tiny_model_dir, tmp_path, monkeypatch):
    # Two engines, as on Modal, here both on the CPU: the embedded SmolLM2 large, the tiny model small.
    for name, value in {"SWITCHYARD_MODEL": "embedded", "SWITCHYARD_SMALL_MODEL": str(tiny_model_dir),
                        "SWITCHYARD_SERVED_MODEL_NAME": "andrewid-system-1",
                        "SWITCHYARD_POLICY": greedy_policy(tmp_path / "policy.json"),
                        "SWITCHYARD_ARGS": "--device cpu --small-device cpu --kv-cache-gib 0.25"
                        }.items():
        monkeypatch.setenv(name, value)
    volume = _Volume()
    monkeypatch.setattr(modal_deploy, "hf_cache", volume)
    model = modal_deploy.Model._get_user_cls()()  # the class Modal runs, its methods called as Modal calls them
    model.start()
    assert volume.commits == 1
    engines = model.service.engines
    assert engines["large"] is not engines["small"]
    assert (engines["large"].engine.device.type, engines["small"].engine.device.type) == ("cpu", "cpu")
    prompts = course_prompts()
    body = {"prompt": [prompts["mmlu_med"], prompts["infobench"]], "max_tokens": 2048}

    async def ask():
        transport = httpx.ASGITransport(app=model.completions())
        async with httpx.AsyncClient(transport=transport, base_url="http://modal") as http:
            try:
                return [await http.post(path, json=body) for path in ("/", "/v1/completions")]
            finally:
                for engine in set(engines.values()):
                    await engine.shutdown()

    root, v1 = asyncio.run(ask())
    assert root.status_code == 200, root.text
    answer = root.json()
    assert answer["model"] == "andrewid-system-1"
    # The short InfoBench prompt went to the small engine, which answers under its own name.
    assert [c["model"] for c in answer["choices"]] == ["andrewid-system-1", tiny_model_dir.name]
    assert [(c["index"], c["prompt"]) for c in answer["choices"]] == list(enumerate(body["prompt"]))
    for choice in answer["choices"]:
        assert choice["prompt"] not in choice["text"] and choice["finish_reason"] in ("stop", "length")
    assert answer["usage"]["completion_tokens"] > 0
    assert [c["text"] for c in answer["choices"]] == [c["text"] for c in v1.json()["choices"]]
