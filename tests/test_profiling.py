"""profiling/run_nsys.sh: the torch.profiler fallback on a tiny CPU run, the nsys path, bad usage."""

import json
import os
import subprocess
import sys
from pathlib import Path

from profiling.torch_profile import profile_command

SCRIPT = Path(__file__).resolve().parent.parent / "profiling" / "run_nsys.sh"

FAKE_NSYS = """#!/bin/sh
case $1 in
  --version) echo "NVIDIA Nsight Systems version fake" ;;
  profile)
    shift
    for arg; do case $arg in --output=*) out=${arg#--output=}; shift ;; -*) shift ;; *) break ;; esac; done
    "$@"; status=$?
    touch "$out.nsys-rep"
    exit $status ;;
  stats)
    echo " Time (%)  Total Time (ns)  Instances  Name"
    echo "     90.0          1000000        256  fake_decode_kernel" ;;
esac
"""


def _env(extra_bin: Path | None = None) -> dict:
    """This interpreter as `python`, and no real nsys, so which profiler runs is the test's choice."""
    kept = [p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "nsys").exists()]
    front = [str(extra_bin)] if extra_bin else []
    return {**os.environ, "PATH": os.pathsep.join(front + [str(Path(sys.executable).parent)] + kept)}


def _run(args, env, timeout=120):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_torch_profiler_fallback_on_a_tiny_decode_run(tiny_model_dir, tmp_path):
    out = tmp_path / "prof"
    r = _run([out, "--", "python", "-m", "bench.offline_throughput", "--model", tiny_model_dir, "--num-prompts", 2,
              "--min-len", 8, "--max-len", 16, "--max-new", 4, "--hf", "none"], _env())
    assert r.returncode == 0, r.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    assert "torch.profiler" in summary and "exit status: 0" in summary
    assert "aten::mm" in summary and "aten::argmax" in summary  # real op rows: the forward and greedy sampling
    trace = json.loads((out / "trace.json").read_text())
    assert any(e.get("name") == "aten::mm" for e in trace["traceEvents"])


def test_a_failing_command_keeps_its_status_and_its_profile(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import sys, torch\ntorch.ones(4).sum()\nsys.exit(4)\n")
    assert profile_command(tmp_path / "prof", ["python", str(script)]) == 4
    summary = (tmp_path / "prof" / "summary.txt").read_text()
    assert "exit status: 4" in summary and "aten::sum" in summary


def test_nsys_when_on_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nsys").write_text(FAKE_NSYS)
    (bin_dir / "nsys").chmod(0o755)
    out = tmp_path / "prof"
    r = _run([out, "--", "sh", "-c", "echo ran; exit 3"], _env(bin_dir))
    assert r.returncode == 3 and "ran" in r.stdout
    assert (out / "profile.nsys-rep").exists()
    summary = (out / "summary.txt").read_text()
    assert "exit status: 3" in summary and "fake_decode_kernel" in summary and "Nsight Systems" in summary


def test_bad_usage_is_refused_with_a_message(tmp_path):
    for args, message in [([], "OUT_DIR is missing"), ([tmp_path, "python"], "expected '--'"),
                          ([tmp_path, "--"], "nothing to run"), (["--", "python"], "OUT_DIR must come first"),
                          ([tmp_path, "--", "ls"], "python commands only")]:
        r = _run(args, _env())
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
