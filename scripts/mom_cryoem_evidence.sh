#!/usr/bin/env bash
# Evidence for issue 8 (seeds/000 §5.2, Table 2 setting, scaled to a 2-core CPU):
# four Gaussians at 25^3 (unit norm), viewing directions from a random mixture of 8 vMF
# (uniform in-plane), white noise sigma = 0.5 per pixel (eq. 29), N images streamed into the
# moments (the paper: N = 5e6), then fits of eq. 28 with the voxel baseline and with FourierNet
# (grid query) + the xi^rho encoder. Full outputs go to $WORK (default /tmp/mom_evidence); the
# small ones (summary, history, density, PNGs, volume) are copied to docs/evidence/mom_cryoem/.
#   scripts/mom_cryoem_evidence.sh [N] [STEPS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-/work/venv/bin/python}
N=${1:-200000}
STEPS=${2:-1500}
WORK=${WORK:-/tmp/mom_evidence}
dest=$here/docs/evidence/mom_cryoem
export PYTHONPATH=$here/python
common=(--simulate gaussians --volume-size 25 --n-images "$N" --vmf 8 --sigma 0.5 --steps "$STEPS" --quiet)
run() {  # name, extra args
  local name=$1; shift
  mkdir -p "$WORK/$name"
  if [ -f "$WORK/voxel/moments.pt" ] && [ ! -f "$WORK/$name/moments.pt" ]; then cp "$WORK/voxel/moments.pt" "$WORK/$name/"; fi
  "$py" -m orbitcore --threads "${THREADS:-1}" mom-cryoem "${common[@]}" --out "$WORK/$name" "$@"
  mkdir -p "$dest/$name"
  for f in summary.json history.json density.npz volume.mrc directions.png loss.png fsc.png; do
    cp "$WORK/$name/$f" "$dest/$name/"
  done
}
[ "${SKIP_VOXEL:-0}" = 1 ] || run voxel --model voxel --density free
run fouriernet_grid --model fouriernet --query grid --density free --lr "${FN_LR:-1e-4}" --steps "${FN_STEPS:-600}"
