#!/usr/bin/env bash
# Profile a command into OUT_DIR: Nsight Systems when `nsys` is on PATH, torch.profiler otherwise.
# Always writes OUT_DIR/summary.txt; profiling/README.md says how to read what it writes.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: profiling/run_nsys.sh OUT_DIR [-- COMMAND...]

  With no COMMAND, profiles a short offline-throughput run (bench/offline_throughput.py):
  Qwen3-0.6B dummy weights, 256 prompts x 256 new tokens where torch sees a GPU; the embedded
  model, 4 prompts x 16 new tokens on CPU.
  nsys on PATH:  OUT_DIR/profile.nsys-rep, OUT_DIR/stats.txt (nsys stats tables), OUT_DIR/summary.txt
  otherwise:     OUT_DIR/trace.json (Chrome trace), OUT_DIR/summary.txt (top ops); the COMMAND
                 must then be `python -m MODULE ...` or `python SCRIPT.py ...` (run in-process).
EOF
}

fail() {
    echo "error: $1" >&2
    usage >&2
    exit 2
}

[ $# -ge 1 ] || fail "OUT_DIR is missing"
case $1 in
    -h | --help) usage; exit 0 ;;
    -*) fail "OUT_DIR must come first, got '$1'" ;;
esac
out=$1
shift
if [ $# -gt 0 ]; then
    [ "$1" = "--" ] || fail "expected '--' before the command, got '$1'"
    shift
    [ $# -gt 0 ] || fail "nothing to run after '--'"
    cmd=("$@")
elif python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    # Decode-heavy and short: GPU machines have no embedded model, so random weights in Qwen3's shapes.
    cmd=(python -m bench.offline_throughput --model Qwen/Qwen3-0.6B --load-format dummy
         --num-prompts 256 --min-len 128 --max-len 512 --max-new 256 --hf none)
else
    cmd=(python -m bench.offline_throughput --num-prompts 4 --min-len 16 --max-len 64 --max-new 16 --hf none)
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The package is not installed with the others; commands keep the caller's working directory.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

if ! command -v nsys >/dev/null 2>&1; then
    exec python -m profiling.torch_profile "$out" -- "${cmd[@]}"
fi

mkdir -p "$out"

status=0
start=$(date +%s)
# node: every kernel inside a CUDA-graph replay is its own row, not one opaque graph launch.
nsys profile --output="$out/profile" --force-overwrite=true --trace=cuda,nvtx,osrt \
    --cuda-graph-trace=node "${cmd[@]}" || status=$?
wall=$(( $(date +%s) - start ))
nsys stats --force-export=true --format=column --report=cuda_gpu_kern_sum --report=cuda_api_sum \
    --report=cuda_gpu_mem_time_sum --report=osrt_sum "$out/profile.nsys-rep" > "$out/stats.txt" \
    || echo "nsys stats failed on $out/profile.nsys-rep" >> "$out/stats.txt"
{
    echo "command: ${cmd[*]}"
    echo "profiler: $(nsys --version)"
    echo "exit status: $status"
    echo "wall time under nsys: $wall s"
    echo "report: $out/profile.nsys-rep (open in the Nsight Systems GUI); tables below from nsys stats"
    echo
    cat "$out/stats.txt"
} > "$out/summary.txt"
exit "$status"
