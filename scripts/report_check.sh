#!/usr/bin/env bash
# Render the HTML report in headless Chromium, check that it rendered, and save a screenshot to
# look at.
#   scripts/report_check.sh [reports/index.html] [reports/screenshot.png]
# Fails unless every inline SVG figure of the page drew data marks (lines, bars, points, images)
# and the page raised no error (scripts/render_check.py report).
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
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "installing chromium (apt-get)..." >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
python3 scripts/render_check.py report "$html" --png "$png" --window "$size"
echo "screenshot: $png ($(du -k "$png" | cut -f1) kB) of $html"
