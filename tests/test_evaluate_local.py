"""evaluate_local.py end to end, and the MMLU answer-format enforcement, on the tiny random model."""

import asyncio
import json
import logging

import pytest

import evaluate_local
from api.config import PRESETS_DIR, parse_args
from api.launch import build_service
from api.protocol import parse_completion
from evaluation.sets import load_items
from tasks.answer_format import LETTERS, letter_token_ids
from tasks.scoring import parse_mmlu_answer


def test_letter_token_ids_follow_an_opening_parenthesis(tiny_model_dir):
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = letter_token_ids(tokenizer)
    assert [tokenizer.decode(tokenizer.encode("(", add_special_tokens=False) + [i]) for i in ids] \
        == [f"({letter}" for letter in LETTERS]


def test_mmlu_enforcement_yields_a_parseable_answer(tiny_model_dir):
    service = build_service(parse_args(["--model", str(tiny_model_dir)]))
    prompts = [item.prompt for item in load_items("mmlu_med", 2)]

    async def run():
        try:
            return await service.complete(parse_completion({"prompt": prompts, "max_tokens": 8}))
        finally:
            await service.engines["large"].shutdown()

    body = asyncio.run(run())
    for choice in body["choices"]:
        assert choice["task"] == "mmlu_med"
        assert parse_mmlu_answer(choice["text"]) in LETTERS
        assert choice["text"].endswith(")."), choice["text"]
        assert choice["completion_tokens"] >= 2  # the answer's tokens plus the enforced letter


def test_end_to_end_in_process(tiny_model_dir, tmp_path):
    """The whole run, with the in-process server configured by `python -m api` flags passed through
    (a --config preset naming the model, its policy and a shorter context, which also bounds the local
    judge's replies), and the summary reporting the settings the server ran with."""
    output, runs = tmp_path / "results.json", tmp_path / "runs.jsonl"
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "speed.json").write_text((PRESETS_DIR / "policies" / "speed.json").read_text())
    preset = tmp_path / "preset.json"
    preset.write_text(json.dumps({"model": str(tiny_model_dir), "policy": "policies/speed.json"}))
    argv = ["--task", "all", "--limit", "2", "--batch_size", "2", "--config", str(preset), "--max-model-len",
            "2048", "--max-tokens", "8", "--output", str(output), "--runs", str(runs)]
    assert evaluate_local.main(argv) == 0
    result = json.loads(output.read_text())
    summary = result["summary"]
    assert set(summary["tasks"]) == {"graphdev", "mmlu_med", "infobench"}
    assert summary["judge"] == f"local judge: {tiny_model_dir.name}"
    assert summary["policy"] == str(tmp_path / "policies" / "speed.json") and summary["backend"] == "in-process"
    assert summary["tasks"]["mmlu_med"]["parseable"] == 1.0
    assert all(s["misrouted"] == 0 and s["items"] == 2 for s in summary["tasks"].values())
    assert len(result["records"]) == 6
    for record in result["records"]:
        assert {"prompt", "output", "extracted", "score", "tokens", "latency_s"} <= set(record)
        assert 0.0 <= record["score"] <= 1.0
    assert len(runs.read_text().splitlines()) == 1
    # Runs accumulate; the second is a one-item run (no judge to load), to keep the suite short.
    assert evaluate_local.main(argv[:1] + ["mmlu_med", "--limit", "1"] + argv[4:]) == 0
    assert len(runs.read_text().splitlines()) == 2
    pytest.importorskip("matplotlib")
    assert evaluate_local.main(["--plot", str(runs), "--plot-output", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["--use_8bit", "--use_4bit"], "conflicting quantization flags"),
    (["--use_4bit", "--quantization", "fp8"], "conflicting quantization flags"),
    (["--use_8bit", "--server", "http://127.0.0.1:9"], "a --server is quantized by its own flags"),
    (["--limt", "3"], "unrecognized arguments (neither evaluate_local.py's nor python -m api's): --limt 3"),
    (["--server", "http://127.0.0.1:9", "--max-model-len", "64"], "a --server is configured by its own flags"),
    (["--model", "/nonexistent/model"], "error: model '/nonexistent/model': not a model directory"),
])
def test_contradictory_or_unknown_flags_fail_clearly(argv, message, capsys):
    assert evaluate_local.main(["--task", "mmlu_med"] + argv) == 2
    assert message in capsys.readouterr().err


def test_use_8bit_quantizes_the_in_process_model(tiny_model_dir, tmp_path, caplog):
    pytest.importorskip("bitsandbytes")
    output = tmp_path / "results.json"
    argv = ["--task", "mmlu_med", "--limit", "1", "--model", str(tiny_model_dir), "--max-tokens", "2",
            "--use_8bit", "--output", str(output), "--runs", str(tmp_path / "runs.jsonl")]
    with caplog.at_level(logging.INFO, logger="scheduler.engine"):
        assert evaluate_local.main(argv) == 0
    assert "(quantization bnb-8bit)" in caplog.text  # the engine's start-up line
    summary = json.loads(output.read_text())["summary"]
    assert summary["quantization"] == "bnb-8bit" and "bnb-8bit" in summary["backend"]
    assert summary["tasks"]["mmlu_med"]["failed_items"] == 0
