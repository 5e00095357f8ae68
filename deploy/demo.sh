#!/usr/bin/env bash
# Quick start 1: install what is missing, build, and watch xanesd fit a demo scan live.
# The demo scan (155×160 px × the 73 real HXN energies, fluorescence, Poisson noise, I0 drift
# recorded in ion-chamber units; domains of four species with composition gradients, a thin
# region and a one-pixel stripe) is made from the Fe K-edge references shipped in config/references; xanesd runs with
# config/default.json; the viewer prints each live update and writes a PNG of the maps.
# --dashboard: also start xanes-dashboard (http://127.0.0.1:8750/, read-only), replay at 2 energies
# per second so the page fills in visibly, and keep daemon and page up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
dashboard=0
case "${1:-}" in
  --dashboard) dashboard=1 ;;
  "") ;;
  *) echo "usage: deploy/demo.sh [--dashboard]" >&2; exit 2 ;;
esac
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

rate=8
if [ "$dashboard" = 1 ]; then
  /usr/bin/python3 clients/dashboard/xanes-dashboard --quiet &
  dash=$!
  trap 'kill $dash $daemon 2>/dev/null || true' EXIT
  rate=2
  echo "open http://127.0.0.1:8750/ in a browser on this machine (the scan starts in 10 s)"
  sleep 10
fi

/usr/bin/python3 clients/python/xanes-view --scan-id demo-scan --png "$OUT/demo-maps.png" --png-every 2 \
  --until-final --timeout 120 &
viewer=$!
sleep 0.5  # let the viewer subscribe before the first frame
# 8 energies per second (2 with the dashboard): a ~9 s scan, so the maps visibly fill in energy by energy.
build/clients/xanes-replay --input "$OUT/scan/demo-scan.h5" --rate "$rate"
wait $viewer
if [ "$dashboard" = 1 ]; then
  echo "the dashboard stays at http://127.0.0.1:8750/ (click a pixel to inspect it); Ctrl-C ends the demo"
  wait $dash || true
fi
/usr/bin/python3 clients/python/xanesctl shutdown > /dev/null
wait $daemon || true
trap - EXIT
echo
echo "scan file:   $OUT/scan/demo-scan.h5 (input, with /truth)"
echo "result file: $OUT/results/demo-scan.h5   (h5ls -r, or silx view)"
echo "maps:        $OUT/demo-maps.png"
