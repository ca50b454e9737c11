#!/usr/bin/env bash
# The GPU session of bench/RESULTS.md, in one command (about 7 minutes on one H200):
#   bash bench/gpu_run.sh [STAGE...]   (stages: distill compile data demo, default all; OUT: folder for the
#                                       outputs, default bench/gpu_out)
# Needs, carried to a machine without network: .whl/ (wheels of what the GPU image lacks, see
# bench/README.md) and .gpu/LibriSpeech (the demo's espeak-ng corpus, spoken where espeak-ng exists).
# Each stage has its own time limit, so one stuck stage leaves the others' figures.
set -u -o pipefail
OUT=${OUT:-bench/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
SITE=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
export PYTHONPATH="$SITE:$PWD"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; python3 -c \
  "import torch; from s3prl_star.integration import patches; patches.apply(); import s3prl.hub, soundfile, librosa; print('torch', torch.__version__, 'imports ok')"; } \
  2>&1 | tee "$OUT/env.txt"

STAGES=${*:-distill compile data demo}
stage() {  # stage NAME SECONDS COMMAND...: output to $OUT/NAME.txt, exit status noted; only STAGES run
    [[ " $STAGES " == *" ${1%_*} "* ]] || return 0
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit $limit s): $*" | tee "$OUT/$name.txt"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep -v -E "Warning|warnings.warn" | tee -a "$OUT/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$OUT/$name.txt"
}

stage distill_gpu 150 python3 bench/bench_distill_gpu.py --profile --json "$OUT/distill_gpu.json"
stage compile_gpu 150 python3 bench/bench_distill_gpu.py --variants ours-bf16,ours-bf16-compiled-student,ours-bf16-compiled --steps 8
CONSUMER=$(python3 -c "import json, sys; print(max(s['utterances_per_s'] for s in json.load(open(sys.argv[1]))['summaries']))" \
  "$OUT/distill_gpu.json" 2>/dev/null || echo 100)
stage data_gpu 40 python3 bench/bench_data.py --utterances 48 --passes 10 --workers 0 4 8 16 --consumer "$CONSUMER"
DEMO=$(mktemp -d)/demo
stage demo_cuda 170 python3 -m s3prl_star.cli demo "$DEMO" --device cuda --corpus .gpu/LibriSpeech
