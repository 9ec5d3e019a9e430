#!/usr/bin/env bash
# Issue 8's GPU figures in one prepared call on a GPU machine, from the project root, after `source .gpu/setup.sh`
# (README, "GPU figures"). Two parts, each under the device tool's 600 s per call:
#     bash bench/gpu_figures.sh small   # the default run, bench/influence.py, bench/evaluation.py      (~5 min)
#     bash bench/gpu_figures.sh 7b      # a random 7.2B Llama: score and run --max-items 32 --steps 5   (~8 min)
# Every step has its own time limit, so one slow step cannot spend the machine's budget; each step's log and JSON go
# to $OUT (the device tool brings that folder back), and the last lines of each log are printed.
set -u
part=${1:-small}
out=${OUT:-/tmp/gpu_figures}
mkdir -p "$out"

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 start rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    start=$(date +%s)
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $(( $(date +%s) - start )) s"
    grep -v -e 'it/s]' -e 's/it]' "$out/$name.log" | tail -n 14
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
case $part in
    small)
        step run_default 200 python3 -m grin_engine run --device cuda --out "$out/run_default.json"
        step influence 150 python3 bench/influence.py --device cuda
        step evaluation 150 python3 bench/evaluation.py --device cuda
        ;;
    7b)
        [ -d /tmp/m7 ] || step make_7b 150 python3 .gpu/random_llama.py /tmp/m7 7b .gpu/tok
        step score_7b 200 python3 -m grin_engine score --model /tmp/m7 --device cuda --max-items 32 \
            --out "$out/score_7b.json"
        step run_7b 220 python3 -m grin_engine run --model /tmp/m7 --device cuda --max-items 32 --steps 5 \
            --out "$out/run_7b.json"
        ;;
    *)
        echo "usage: bash bench/gpu_figures.sh small|7b" >&2
        exit 2
        ;;
esac
