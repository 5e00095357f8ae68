#!/usr/bin/env bash
# Refreshes the dashboard's vendored browser assets (clients/dashboard/static/vendor/) from npm:
# `npm ci` installs exactly what clients/dashboard/package-lock.json pins, then uPlot's
# minified build, its stylesheet and its licence are copied next to the page. The copies are
# committed, so building, testing and running never touch the network; run this only to update
# uPlot (change the version in package.json, `npm install --package-lock-only`, then this).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dash="$here/clients/dashboard"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$dash/package.json" "$dash/package-lock.json" "$work/"
(cd "$work" && npm ci --no-audit --no-fund --ignore-scripts)
out="$dash/static/vendor"
mkdir -p "$out"
cp "$work/node_modules/uplot/dist/uPlot.iife.min.js" "$work/node_modules/uplot/dist/uPlot.min.css" "$out/"
cp "$work/node_modules/uplot/LICENSE" "$out/uPlot.LICENSE"
version="$(cd "$work" && node -p 'require("./node_modules/uplot/package.json").version')"
echo "uPlot $version (npm, MIT): uPlot.iife.min.js, uPlot.min.css, uPlot.LICENSE" > "$out/README.txt"
echo "deploy/vendor-web.sh: uPlot $version copied into $out"
