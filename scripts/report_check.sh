#!/usr/bin/env bash
# Render the HTML report in headless Chromium and save a screenshot to look at.
#   scripts/report_check.sh [reports/index.html] [reports/screenshot.png]
# Installs Debian's chromium with apt-get when no chromium is on PATH (needs root, once).
# Every network feature is off: the page must render from the file alone.
set -euo pipefail
cd "$(dirname "$0")/.."
html="${1:-reports/index.html}"
png="${2:-reports/screenshot.png}"
size="${REPORT_WINDOW:-1400,2400}"   # width,height in CSS pixels

if [[ ! -f "$html" ]]; then
  echo "error: $html not found; run the pipeline first (dvc repro report)" >&2
  exit 2
fi
browser="$(command -v chromium || command -v chromium-browser || true)"
if [[ -z "$browser" ]]; then
  echo "installing chromium (apt-get)..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  browser="$(command -v chromium)"
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
rm -f "$png"
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" --window-size="$size" \
  --screenshot="$png" "file://$(realpath "$html")" >/dev/null 2>&1
if [[ ! -s "$png" ]]; then
  echo "error: chromium wrote no screenshot to $png" >&2
  exit 1
fi
echo "screenshot: $png ($(du -k "$png" | cut -f1) kB) of $html"
