#!/usr/bin/env bash
# On the lent GPU machine, before the hold ends: pack what this sitting measured and what a later
# sitting on a fresh machine needs (results, state, carried teacher weights, logs; never the run
# directories; carry/ holds the weights of the teachers that unfinished runs need) into DEST as parts of
# at most 15 MiB: the device tool brings back at most 8 files of 16 MiB each, 64 MiB together, no
# deeper than 2 folders.
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
packed=$(mktemp)
# (tar exits 1 when a file changed while it was read: a log still being written; the pack is still good)
tar czf "$packed" --warning=no-file-changed -C "$src" "${items[@]}" || [ $? -eq 1 ]
size=$(stat -c %s "$packed")
mib=$(( (size + 1048575) / 1048576 ))
if [ "$size" -gt $((60 * 1048576)) ]; then
    rm -f "$packed"
    echo "error: the pack is $mib MiB; the device tool brings back 64 MiB at most: leave out logs or carry" >&2
    exit 2
fi
split -b 15m -d -a 1 "$packed" "$dest/evidence.tgz."
rm -f "$packed"
ls -l "$dest"/evidence.tgz.*
if [ "$mib" -gt 36 ]; then
    echo "note: $mib MiB; with the data and wheels (26 MB) the next call's carry may exceed its 64 MiB" >&2
fi
