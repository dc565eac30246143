#!/usr/bin/env bash
# The test suite on the oldest torch the package supports (pyproject: torch>=2.11, torchvision>=0.26,
# the versions of the GPU machines' image), in a virtual environment of its own, so that code written
# against requirements.lock's newer torch is checked before it meets a GPU session.
#
#   bash scripts/test-oldest-torch.sh [PYTEST ARGS...]      (VENV=... to choose the folder)
#
# It downloads torch 2.11 with its CUDA libraries (about 5 GB installed); the other packages are
# requirements.lock's. The tests themselves run on CPU, as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-${TMPDIR:-/tmp}/taildistill-oldest-torch}
TORCH=${TORCH:-2.11.0}
TORCHVISION=${TORCHVISION:-0.26.0}
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "torch==$TORCH" "torchvision==$TORCHVISION"
# the lock without its torch, torchvision and CUDA pins (those come with the torch above)
lock="$VENV/lock-without-torch.txt"
grep -v -E '^(torch|torchvision|triton|nvidia-|cuda-)' requirements.lock > "$lock"
"$VENV/bin/python" -m pip install -q -c "$lock" -e ".[test]"
"$VENV/bin/python" - "$TORCH" <<'EOF'
import sys

import torch
import torchvision

want = sys.argv[1]
if not torch.__version__.startswith(want):
    sys.exit(f"error: the environment has torch {torch.__version__}, not {want} (a dependency upgraded it)")
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
EOF
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest -n auto "$@"
