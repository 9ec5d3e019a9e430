#!/usr/bin/env bash
# The GPU figures of docs/RESULTS.md in one prepared call on a GPU machine, from the project root, after `source .gpu/setup.sh`
# (docs/RESULTS.md, GPU figures). Two parts, each under the device tool's 600 s per call:
#     bash bench/gpu_figures.sh small   # the default run, bench/influence.py, bench/evaluation.py      (~5 min)
#     bash bench/gpu_figures.sh 7b      # a random 7.2B Llama: score and run --max-items 32 --steps 5   (~8 min)
# Every step has its own time limit, so one slow step cannot spend the machine's budget; each step's log and JSON go
# to $OUT (the device tool brings that folder back), and the last lines of each log are printed.
# DEVICE=cpu SHAPE=135m bash bench/gpu_figures.sh 7b is the same flow on a CPU, small: a check of this script.
# Pre-flight, before any step: every package the steps import must import (a missing wheel is one line, not a
# traceback after minutes), and a random model folder without its completion mark (a run cut off half-way) is
# rebuilt, not reused.
set -u
part=${1:-small}
out=${OUT:-/tmp/gpu_figures}
device=${DEVICE:-cuda}
shape=${SHAPE:-7b}
folder=/tmp/random_llama_$shape
mkdir -p "$out"

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $(( $(date +%s) - start )) s"
    tr '\r' '\n' < "$out/$name.log" | grep -v -E '[0-9]+%\|' | tail -n 14  # (not the progress bars)
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 bench/preflight.py || exit 3
case $part in
    small)
        step run_default 200 python3 -m grin_engine run --device "$device" --out "$out/run_default.json"
        step influence 150 python3 bench/influence.py --device "$device"
        step evaluation 150 python3 bench/evaluation.py --device "$device"
        ;;
    7b)
        if [ ! -f "$folder/random_llama.done" ]; then  # absent, or half-written by a run that was cut off
            rm -rf "$folder"
            step "make_$shape" 150 python3 bench/random_llama.py "$folder" "$shape"
        fi
        step "score_$shape" 200 python3 -m grin_engine score --model "$folder" --device "$device" --max-items 32 \
            --out "$out/score_$shape.json"
        step "run_$shape" 220 python3 -m grin_engine run --model "$folder" --device "$device" --max-items 32 \
            --steps 5 --out "$out/run_$shape.json"
        ;;
    *)
        echo "usage: bash bench/gpu_figures.sh small|7b" >&2
        exit 2
        ;;
esac
