#!/usr/bin/env bash
# Evidence for issue 8: the 70S ribosome map (../shared/data/clean70SRibosome_vol_65p.mrc, 5 Å/voxel
# at 65³ as in ASPIRE's tutorials) Fourier-cropped to the working size n (voxel size 5·65/n Å),
# unit norm, vMF-mixture viewing (8 components), noise sigma per pixel, N images -> moments ->
# voxel fit (free density). Resolution vs working size: one run per n.
#   scripts/mom_cryoem_ribosome.sh "17 25" [N] [STEPS] [SIGMA]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-/work/venv/bin/python}
SIZES=${1:-"17 25"}
N=${2:-100000}
STEPS=${3:-1000}
SIGMA=${4:-0.0}
MAP=${MAP:-$here/../../shared/data/clean70SRibosome_vol_65p.mrc}
[ -f "$MAP" ] || MAP=/work/shared/data/clean70SRibosome_vol_65p.mrc
WORK=${WORK:-/tmp/mom_evidence}
dest=$here/docs/evidence/mom_cryoem
export PYTHONPATH=$here/python
for n in $SIZES; do
  name=ribosome_$n
  "$py" -m orbitcore --threads "${THREADS:-1}" mom-cryoem --simulate "$MAP" --pixel-size 5 --volume-size "$n" \
    --n-images "$N" --vmf 8 --sigma "$SIGMA" --model voxel --density free --steps "$STEPS" --quiet \
    --out "$WORK/$name"
  mkdir -p "$dest/$name"
  for f in summary.json history.json density.npz volume.mrc directions.png loss.png fsc.png; do
    cp "$WORK/$name/$f" "$dest/$name/"
  done
done
