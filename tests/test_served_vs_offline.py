"""bench.served_vs_offline on the tiny model: in-process and over HTTP (unstreamed, streamed)."""

import json

from bench.served_vs_offline import MODES, main, server_argv


def test_server_flags_match_the_in_process_engine():
    settings = {"model": "m", "load_format": "dummy", "tokenizer": None, "max_num_seqs": 8,
                "enable_prefix_caching": False}
    assert server_argv(settings) == ["--no-prefix-caching", "--model", "m", "--load-format", "dummy",
                                     "--max-num-seqs", "8"]


def test_every_mode_generates_the_same_tokens(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "served.json"
    main(["--model", str(tiny_model_dir), "--workload", "both", "--limit", "3", "--max-tokens", "5",
          "--kv-cache-gib", "0.05", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["workload"], r["mode"]) for r in rows] == [(w, m) for w in ("course", "nanovllm") for m in MODES]
    for r in rows:
        # ignore_eos: every mode runs exactly the requested lengths, so the engine work is identical.
        assert r["output_tokens"] == r["expected_tokens"] > 0
        assert r["tok_per_s"] > 0 and r["vs_in_process"] > 0
        if r["mode"] == "in-process":
            assert r["vs_in_process"] == 1.0
    course = [r for r in rows if r["workload"] == "course"]
    assert course[0]["prompts"] > course[0]["requests"]  # the trace's batches travel as multi-prompt requests
    table = capsys.readouterr().out
    assert "vs in-process" in table and all(m in table for m in MODES)
