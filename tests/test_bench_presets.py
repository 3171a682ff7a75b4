"""bench.presets: a preset served and replayed end to end (the tiny model standing in for Qwen3)."""

import json
import subprocess
import sys
import time

from bench.presets import engines_from_log, main
from bench.server_process import _record_stuck


def test_engine_lines_are_read_from_the_log():
    log = ("2026-12-03 06:27:04,006 INFO scheduler.engine: Qwen/Qwen3-8B: weights 5.96 GiB (quantization "
           "bnb-4bit), KV cache 24789 blocks of 16 tokens (54.47 GiB)\nnoise\n")
    assert engines_from_log(log) == [{"model": "Qwen/Qwen3-8B", "weights_gib": 5.96, "quantization": "bnb-4bit",
                                      "kv_blocks": 24789}]


def test_a_preset_is_served_and_replayed(tiny_model_dir, tmp_path, capsys):
    preset = tmp_path / "tiny.json"
    preset.write_text(json.dumps({"model": str(tiny_model_dir), "max_model_len": 2048, "kv_cache_gib": 0.05}))
    trace = tmp_path / "trace.json"
    # Three requests the server answers, and one it refuses (max_tokens 0): a replay with an error,
    # after which the engines' gauges are read.
    trace.write_text(json.dumps([{"arrival_time": t, "prompts": ["What is 2+2?"] * (1 + t), "max_length": 4 if t < 3
                                  else 0} for t in range(4)]))
    assert main(["--presets", str(preset), "--load-format", "auto", "--trace", str(trace), "--time-scale", "0.1",
                 "--out-dir", str(tmp_path / "out")]) == 0
    [result] = json.loads((tmp_path / "out" / "presets.json").read_text())
    assert result["replay"]["served_in_window"] == 3 and result["replay"]["errors"] == 1
    assert result["engines"][0]["kv_blocks"] > 0 and result["exit_seconds"] is not None
    gauges = result["gauges_after_errors"].splitlines()
    assert any(g.startswith("switchyard_engine_alive{") and g.endswith(" 1.0") for g in gauges), gauges
    assert any(g.startswith("switchyard_running_sequences{") and g.endswith(" 0.0") for g in gauges), gauges
    out = capsys.readouterr().out
    assert "3/4 requests served, 1 errors" in out and "after the errors: switchyard_engine_alive" in out


def test_a_stuck_process_is_described_from_proc(tmp_path):
    """What the log gets about a server that ignores SIGTERM: one line per thread with its state, from
    /proc, readable whatever the process is doing (a sleeping process here: two threads, both in S)."""
    code = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(1.0)
        log = tmp_path / "server.log"
        with open(log, "wb") as out:
            _record_stuck(proc, out)
        text = log.read_text()
    finally:
        proc.kill()
        proc.wait()
    threads = [line for line in text.splitlines() if line.startswith("thread ")]
    assert len(threads) == 2 and all("state S" in line for line in threads), text
    assert "did not exit after SIGTERM" in text and "GPUs" in text


def test_a_preset_that_cannot_start_says_why(tmp_path, capsys):
    assert main(["--presets", "nosuch", "--out-dir", str(tmp_path)]) == 0
    [result] = json.loads((tmp_path / "presets.json").read_text())
    assert result["engines"] == [] and "preset 'nosuch'" in result["error"]  # the server's own error line
    assert "failed: the server exited with status 2 before it was ready: " in capsys.readouterr().out
