#!/usr/bin/env bash
# The prepared GPU check of issue 23, one command (about 3-5 minutes on one H200; budget 8):
#
#     bash benchmarks/gpu_run.sh              # on a machine with a CUDA GPU
#     bash benchmarks/gpu_run.sh --dry-run    # anywhere: the same steps on the CPU, tiny model, 1 image
#
# 1. bench_throughput.py at the paper's settings with ViT-B-32's shape (open_clip's config, seeded random
#    weights: no download), bf16 on CUDA: images/s, host CPU-seconds per image, stage wall seconds and
#    the bare encoder's time on the same patches, so the run says whether the host or the device bounds
#    the ingest;
# 2. `pytest -m gpu` (the tests that need a GPU).
# Figures go to stdout and, with OUT set, to $OUT/bench_throughput.json and $OUT/gpu_run.log.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The device machine reaches no network: WordNet 3.0 comes from CONVIS_WORDNET, the user cache, or a copy
# carried with the working tree as .wordnet/ (e.g. run's carry of ~/.cache/convis-db/nltk_data/corpora/wordnet,
# 36 MB, copied to .wordnet first).
if [ -z "${CONVIS_WORDNET:-}" ] && [ -f .wordnet/data.noun ]; then export CONVIS_WORDNET="$PWD/.wordnet"; fi
if ! "$PY" -c "from convis_db.wordnet.source import find_wordnet_dir; find_wordnet_dir(allow_download=False)" 2>/dev/null; then
    echo "gpu_run.sh: WordNet 3.0 not found and this machine may have no network: copy ~/.cache/convis-db/nltk_data/corpora/wordnet to .wordnet/ (carry it), or set CONVIS_WORDNET" >&2
    exit 2
fi
LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; LOG="$OUT/gpu_run.log"; fi
if [ "${1:-}" = "--dry-run" ]; then
    BENCH=(--device cpu --preset cpu-fast --images 1 --rounds 1)
else
    BENCH=(--device cuda --model ViT-B-32 --pretrained none --precision bf16 --preset paper --images 24 --rounds 2)
fi
{
    echo "# gpu_run.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    timeout 420 "$PY" benchmarks/bench_throughput.py "${BENCH[@]}"
    echo "bench_throughput exit code $?"
    timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider
    echo "pytest -m gpu exit code $?"
} 2>&1 | tee "$LOG"
