#!/usr/bin/env bash
# Here, after a device call that ran scripts/gpu/pack.sh: rebuild .carry/evidence from the parts it
# brought back, so that the next sitting (carry: [".carry"]) goes on where this one stopped.
#   bash scripts/gpu/unpack.sh FILES_AT [EVIDENCE_DIR]    (default .carry/evidence)
set -euo pipefail
cd "$(dirname "$0")/../.."
from=${1:?give the folder the parts came back to, files_at in the device reply}
dest=${2:-.carry/evidence}
if ! compgen -G "$from/evidence.tgz.*" > /dev/null; then
    echo "error: $from holds no evidence.tgz.* parts" >&2
    exit 2
fi
mkdir -p "$dest"
# into a fresh folder first: a part missing or damaged leaves the previous sitting's state as it was
fresh=$(mktemp -d)
if ! cat "$from"/evidence.tgz.* | tar xzf - -C "$fresh"; then
    rm -rf "$fresh"
    echo "error: the parts in $from do not make a whole pack (one missing or damaged?); $dest is unchanged" >&2
    exit 2
fi
# what a pack holds is replaced, not merged: a carry/ the device has emptied must not travel again
for f in SUMMARY.md evidence.log console.log environment.json evidence-state.json bench results teachers carry logs; do
    rm -rf "${dest:?}/$f"
done
cp -a "$fresh"/. "$dest"/
rm -rf "$fresh"
echo "unpacked into $dest:"; ls "$dest"
