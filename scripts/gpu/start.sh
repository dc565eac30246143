#!/usr/bin/env bash
# On the lent GPU machine, in the repository root (with .carry/ from prepare.sh carried): install the
# carried wheels, start the evidence run in its own process session, and return at once.
#   bash scripts/gpu/start.sh [MINUTES] [OUT] [EVIDENCE OPTIONS...]    (default 24 minutes, OUT .carry/evidence)
# e.g. `bash scripts/gpu/start.sh 24 .carry/evidence --cuda-graph` trains the suites as CUDA graphs
# Then keep the machine with calls that wait and report (`sleep 500; tail .carry/evidence/evidence.log`)
# and run `bash scripts/gpu/pack.sh` (it packs OUT into $OUT) in a call before the hold ends.
set -euo pipefail
cd "$(dirname "$0")/../.."
minutes=${1:-24}
out=${2:-.carry/evidence}
shift $(( $# < 2 ? $# : 2 ))
if compgen -G ".carry/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$out"
# the data and the run directories at fixed absolute paths outside .carry: a run's config names both
# (its data root, its teacher's run), so runs restored on another machine hash and resolve the same
# wherever the repository sits, and a later call that carries .carry again cannot replace them
data=/tmp/taildistill-data
if ! compgen -G ".carry/data/*.tar.gz" > /dev/null; then
    echo "error: .carry/data holds no CIFAR-10 archives: run scripts/gpu/prepare.sh there and carry .carry" >&2
    exit 2
fi
mkdir -p "$data"
cp -u .carry/data/* "$data"/
runs=${EVIDENCE_RUNS:-/tmp/taildistill-evidence-runs}
setsid nohup python3 scripts/gpu/evidence.py --data "$data" --out "$out" --runs "$runs" --minutes "$minutes" "$@" \
    > "$out/console.log" 2>&1 < /dev/null &
echo "evidence run started (pid $!); its log: $out/evidence.log"
