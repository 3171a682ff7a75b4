"""Run a Python command in this process under torch.profiler: a Chrome trace and a table of the top ops.

    python -m profiling.torch_profile OUT_DIR -- python -m bench.offline_throughput --hf none
    python -m profiling.torch_profile OUT_DIR -- python path/to/script.py ARGS...

The fallback of `profiling/run_nsys.sh` where Nsight Systems is missing, and a way to get the torch
view (aten ops above their kernels) where it is not. The command runs in this interpreter through
`runpy`, as `python -m` or `python script.py` would run it, so whatever `python` it names, it gets
this one. Writes OUT_DIR/trace.json (open it in https://ui.perfetto.dev or chrome://tracing) and
OUT_DIR/summary.txt (the command, its wall time and exit status, then the top ops: by self CUDA
time on a GPU, followed by self CPU time; by self CPU time on CPU). profiling/README.md says how to
read them. Exits with the command's own status.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
import traceback
from pathlib import Path

TOP_ROWS = 40


class UsageError(ValueError):
    """A command this module cannot run in-process."""


def parse_command(words: list[str]) -> tuple[str, str, list[str]]:
    """("module", name, args) for `python -m name args`, ("path", file, args) for `python file args`."""
    if not words or not os.path.basename(words[0]).startswith("python"):
        raise UsageError(f"the torch.profiler fallback runs python commands only "
                         f"(python -m MODULE ... or python SCRIPT.py ...), got {' '.join(words) or 'nothing'!r}")
    rest = words[1:]
    if rest[:1] == ["-m"]:
        if len(rest) < 2:
            raise UsageError("python -m needs a module name")
        return "module", rest[1], rest[2:]
    if not rest or rest[0].startswith("-"):
        raise UsageError(f"expected `python -m MODULE ...` or `python SCRIPT.py ...`, got {' '.join(words)!r} "
                         "(interpreter options are not supported)")
    if not Path(rest[0]).is_file():
        raise UsageError(f"{rest[0]}: no such script")
    return "path", rest[0], rest[1:]


def run_command(kind: str, target: str, args: list[str]) -> int:
    """Run the parsed command as `__main__`; returns its exit status (1 if it raised).

    sys.argv and sys.path are put back afterwards, so a test can call this in its own process."""
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [target, *args]
    try:
        if kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, str(Path(target).resolve().parent))  # as `python script.py` does
            runpy.run_path(target, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 -- any failure: the trace up to it is still worth writing
        traceback.print_exc()
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


def profile_command(out_dir: str | Path, words: list[str]) -> int:
    """Profile `words` (a python command line) into out_dir/trace.json and out_dir/summary.txt."""
    kind, target, args = parse_command(words)
    import torch  # only now: a usage error is answered without loading torch
    from torch.profiler import ProfilerActivity, profile
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    on_gpu = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        status = run_command(kind, target, args)
    wall = time.perf_counter() - start
    prof.export_chrome_trace(str(out / "trace.json"))
    ops = prof.key_averages()
    device = torch.cuda.get_device_name() if on_gpu else f"cpu, {torch.get_num_threads()} threads"
    lines = [f"command: {' '.join(words)}",
             f"profiler: torch.profiler {torch.__version__} ({'CPU + CUDA' if on_gpu else 'CPU'}), device {device}",
             f"exit status: {status}",
             f"wall time under the profiler: {wall:.2f} s",
             f"trace: {out / 'trace.json'} (https://ui.perfetto.dev or chrome://tracing)", ""]
    # On a GPU the kernels' own time comes first; the CPU table then shows the host work around them.
    sorts = (["self_device_time_total"] if on_gpu else []) + ["self_cpu_time_total"]
    for key in sorts:
        lines += [f"top {TOP_ROWS} by {key}:", ops.table(sort_by=key, row_limit=TOP_ROWS), ""]
    (out / "summary.txt").write_text("\n".join(lines))
    return status


def main(argv: list[str] | None = None) -> int:
    """`OUT_DIR -- python ...`: profile the command; 2 on bad usage, else the command's status."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[1] != "--" or argv[0].startswith("-"):
        print("usage: python -m profiling.torch_profile OUT_DIR -- python (-m MODULE | SCRIPT.py) [ARGS...]",
              file=sys.stderr)
        return 2
    try:
        return profile_command(argv[0], argv[2:])
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
