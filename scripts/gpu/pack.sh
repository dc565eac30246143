#!/usr/bin/env bash
# On the lent GPU machine, before the hold ends: pack what this sitting measured and what a later
# sitting on a fresh machine needs (results, state, carried teacher weights, logs; never the run
# directories) into DEST as parts of at most 15 MiB: the device tool brings back at most 8 files of
# 16 MiB each, no deeper than 2 folders.
#   bash scripts/gpu/pack.sh [EVIDENCE_DIR] [DEST]    (default .carry/evidence and $OUT)
# Here, afterwards: bash scripts/gpu/unpack.sh FILES_AT  (rebuilds .carry/evidence for the next sitting)
set -euo pipefail
cd "$(dirname "$0")/../.."
src=${1:-.carry/evidence}
dest=${2:-${OUT:?give DEST or set OUT}}
items=()
for f in SUMMARY.md evidence.log console.log environment.json evidence-state.json bench results teachers carry logs; do
    if [ -e "$src/$f" ]; then items+=("$f"); fi
done
if [ ${#items[@]} -eq 0 ]; then
    echo "error: $src holds no evidence run" >&2
    exit 2
fi
mkdir -p "$dest"
rm -f "$dest"/evidence.tgz.*
tar czf - -C "$src" "${items[@]}" | split -b 15m -d -a 1 - "$dest/evidence.tgz."
parts=$(find "$dest" -maxdepth 1 -name 'evidence.tgz.*' | wc -l)
if [ "$parts" -gt 8 ]; then
    echo "error: the pack needs $parts parts of 15 MiB, more than the 8 files that come back; leave out logs or carry" >&2
    exit 2
fi
ls -l "$dest"/evidence.tgz.*
