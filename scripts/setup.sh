#!/usr/bin/env bash
# Set up convis-db on a fresh Debian/Ubuntu machine: WordNet 3.0 packages, a virtualenv, the package.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if command -v apt-get >/dev/null && [ ! -f /usr/share/wordnet/data.noun ]; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q wordnet-base wordnet-sense-index
fi
# Debian's Chromium for the explorer's browser test (tests/test_web_browser.py drives it with Playwright).
if command -v apt-get >/dev/null && [ ! -x /usr/bin/chromium ]; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torchvision must match torch exactly; pin the pair that open_clip's import of torchvision works with.
if [ "$(uname -m)" = "x86_64" ]; then
    python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
else
    python -m pip install -q "torch==2.9.1" "torchvision==0.24.1"
fi
# The ray extra (ingest --engine ray) is installed too, so that its tests run in CI.
python -m pip install -q -e ".[test,ray]"
python -c "import torch, torchvision, open_clip, faiss, duckdb, nltk; import ray; print('convis-db environment ready:', 'torch', torch.__version__, '| faiss', faiss.__version__, '| duckdb', duckdb.__version__, '| ray', ray.__version__)"
