#!/usr/bin/env bash
# Here, before a GPU session: put what the lent GPU machine lacks into .carry/ (in .gitignore),
# to be named in the device call's `carry`: kornia's wheels for its Python 3.12 image (its image has
# torch, torchvision, timm and the other dependencies) and the CIFAR-10 archives (20 MB).
#   bash scripts/gpu/prepare.sh [DATA_DIR]     (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data}
carry=.carry
mkdir -p "$carry/whl" "$carry/data"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$carry/whl" kornia==0.9.0 kornia_rs==0.2.0
for f in cifar10-jpeg-train.tar.gz cifar10-jpeg-test.tar.gz; do
    [ -f "$data/$f" ] || { echo "error: $data/$f not found (give the folder holding the CIFAR-10 archives)" >&2; exit 2; }
    cp -u "$data/$f" "$carry/data/"
done
du -sh "$carry"
echo "carry: [\".carry\"]; on the device: bash scripts/gpu/start.sh MINUTES"
