"""The system presets (`python -m api --config system1` ... `system5`, files under configs/): each
parses into the ServerConfig it describes, flags given explicitly override it, a preset that asks
for speculative decoding says at start that it runs without, and a malformed preset is refused
naming the file and the key."""

import json
import logging

import pytest

from api.config import PRESETS_DIR, ServerConfig, load_preset, parse_args
from tasks.policy import load_policies

# What the five systems are: large, small, quantization of each, speculative decoding.
SYSTEMS = {
    "system1": ("Qwen/Qwen3-8B", "Qwen/Qwen3-4B", "none", "none", False),
    "system2": ("Qwen/Qwen3-4B", "Qwen/Qwen3-0.6B", "bnb-8bit", "bnb-8bit", True),
    "system3": ("Qwen/Qwen3-8B", "Qwen/Qwen3-1.7B", "bnb-8bit", "bnb-8bit", True),
    "system4": ("Qwen/Qwen3-14B", "Qwen/Qwen3-8B", "bnb-4bit", "bnb-4bit", False),
    "system5": ("Qwen/Qwen3-8B", "Qwen/Qwen3-1.7B", "bnb-8bit", "bnb-8bit", True),
}


def test_every_preset_file_is_a_known_system():
    assert sorted(p.stem for p in PRESETS_DIR.glob("*.json")) == sorted(SYSTEMS)


@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_preset_parses_into_its_server_config(name, caplog):
    large, small, quantization, small_quantization, speculative = SYSTEMS[name]
    with caplog.at_level(logging.WARNING, logger="switchyard"):
        config = parse_args(["--config", name])
    assert isinstance(config, ServerConfig)
    assert (config.model, config.small_model, config.quantization, config.small_quantization) \
        == (large, small, quantization, small_quantization)
    assert config.engine_config(small=False).quantization == quantization
    assert config.engine_config(small=True).quantization == small_quantization
    load_policies(config.policy)  # the task policy it names exists and is valid
    assert load_preset(name)["speculative"] is speculative
    assert ("speculative decoding" in caplog.text) is speculative


def test_explicit_flags_override_the_preset():
    config = parse_args(["--model", "embedded", "--config", "system4", "--small-quantization", "none",
                         "--max-num-seqs", "8"])
    assert (config.model, config.small_model) == ("embedded", "Qwen/Qwen3-8B")
    assert (config.quantization, config.small_quantization, config.max_num_seqs) == ("bnb-4bit", "none", 8)


def test_small_model_follows_the_large_models_quantization_unless_told():
    config = parse_args(["--small-model", "x", "--quantization", "fp8"])
    assert config.engine_config(small=True).quantization == "fp8"


def test_the_small_engine_takes_045_of_a_shared_gpu_and_all_of_its_own():
    assert parse_args(["--config", "system1"]).engine_config(small=True).gpu_memory_utilization == 0.45
    own = parse_args(["--config", "system1", "--small-device", "cuda:1"]).engine_config(small=True)
    assert own.gpu_memory_utilization == ServerConfig.gpu_memory_utilization


@pytest.mark.parametrize("content, message", [
    ({"model": "Qwen/Qwen3-8B", "quantisation": "bnb-8bit"}, "unknown keys ['quantisation']"),
    ({"quantization": "int3"}, "quantization: 'int3' is not one of"),
    ({"max_num_seqs": "64"}, "max_num_seqs: '64' is not of type int"),
    ({"speculative": "yes"}, "speculative: 'yes' is not of type bool"),
    ({"small_model": None, "prefix_caching": 1}, "prefix_caching: 1 is not of type bool"),
    (["model"], "expected a JSON object"),
])
def test_a_malformed_preset_is_refused_by_file_and_key(content, message, tmp_path, capsys):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="mine.json"):
        load_preset(str(path))
    with pytest.raises(SystemExit):
        parse_args(["--config", str(path)])
    assert message in capsys.readouterr().err


def test_an_unknown_preset_names_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--config", "system9"])
    assert "system1, system2, system3, system4, system5" in capsys.readouterr().err
