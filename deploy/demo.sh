#!/usr/bin/env bash
# Quick start 1: install what is missing, build, and watch xanesd fit a demo scan live.
# The demo scan (155×160 px × the 73 real HXN energies, fluorescence, Poisson noise, I0 drift
# recorded in ion-chamber units; domains of four species with composition gradients, a thin
# region and a one-pixel stripe) is made from the Fe K-edge references shipped in config/references; xanesd runs with
# config/default.json; the viewer prints each live update and writes a PNG of the maps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/build.sh
OUT=demo-out
mkdir -p "$OUT/scan" "$OUT/results"
build/clients/xanes-simulate --refs config/references/fe_k_library_normalized.nor \
  --use Magnetite,Goethite,Pyrite,Hematite_NP --energies config/references/fe_k_energies_hxn.txt \
  --shape 155x160 --layout scene --counts 2000 --background 0.002 --i0-units 1e5 --seed 7 \
  --out "$OUT/scan/demo-scan.h5"

build/service/xanesd --config config/default.json --set output.directory="$OUT/results" &
daemon=$!
trap 'kill $daemon 2>/dev/null || true' EXIT
/usr/bin/python3 clients/python/xanesctl status > /dev/null  # waits until the daemon answers

/usr/bin/python3 clients/python/xanes-view --scan-id demo-scan --png "$OUT/demo-maps.png" --png-every 2 \
  --until-final --timeout 120 &
viewer=$!
sleep 0.5  # let the viewer subscribe before the first frame
# 8 energies per second: a ~9 s scan, so the maps visibly fill in energy by energy.
build/clients/xanes-replay --input "$OUT/scan/demo-scan.h5" --rate 8
wait $viewer
/usr/bin/python3 clients/python/xanesctl shutdown > /dev/null
wait $daemon || true
trap - EXIT
echo
echo "scan file:   $OUT/scan/demo-scan.h5 (input, with /truth)"
echo "result file: $OUT/results/demo-scan.h5   (h5ls -r, or silx view)"
echo "maps:        $OUT/demo-maps.png"
