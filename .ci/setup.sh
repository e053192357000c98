#!/usr/bin/env bash
# One set-up for a fresh machine, used by the README's two commands and by CI:
# a virtual env in .venv with torch 2.14.1 / torchvision 0.29.1, kdbench (editable, with test
# tools), and Fashion-MNIST and chromium from Debian's packages where apt is available.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned resolve would fetch a multi-GB CUDA build
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[test]"
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null \
    || echo "setup: could not apt-get install dataset-fashion-mnist; pass --data-root to a folder with the Fashion-MNIST IDX files" >&2
fi
# Debian's chromium for the HTML report's browser test (playwright drives it; `playwright install` is not run)
if ! { command -v chromium || command -v chromium-browser; } >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium; } >/dev/null \
    || echo "setup: could not apt-get install chromium; tests/reporting/test_report_html.py will be skipped" >&2
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
