#!/usr/bin/env python3
"""Render an HTML page in headless Chromium, offline, and report what it drew.

    python scripts/render_check.py plots dvc_plots/index.html [--png shot.png]
    python scripts/render_check.py report reports/index.html [--png shot.png]

``plots``: a page written by ``dvc plots show`` / ``dvc plots diff``. It loads Vega, Vega-Lite
and Vega-Embed from a CDN; the copy rendered here loads the same versions from the npm packages
in tests/browser/node_modules (``cd tests/browser && npm ci``, run by ``make test``) instead, and fails if the page
asks for versions other than the pinned ones. Every plot is embedded with the SVG renderer and
its Vega scenegraph is walked: per plot, the title, the axis titles and the data marks with the
number of items they drew at finite coordinates.

``report``: the pipeline's self-contained report (inline matplotlib SVG figures, no script).
Per ``<svg>``: its rendered size, its caption, and its data marks: the elements matplotlib clips
to the axes (lines, bars, points, images), outside ticks, grid and legend, drawn with a box of
non-zero width and height.

Both record JavaScript errors, failed resource loads, ``console.error`` and ``console.warn``.
Network access is off (every host name resolves to nothing): the page must render from disk.
The result is one JSON object (returned by :func:`render`, printed by the CLI with ``--json``);
the CLI exits 1 with one line per problem when :func:`problems` finds any.
"""
from __future__ import annotations

import argparse
import html as htmllib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_MODULES = ROOT / "tests" / "browser" / "node_modules"
PACKAGES = {"vega": "vega.min.js", "vega-lite": "vega-lite.min.js", "vega-embed": "vega-embed.min.js"}
CDN = re.compile(r'https://cdn\.jsdelivr\.net/npm/(vega|vega-lite|vega-embed)@([0-9][^"\'/\s]*)')
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND"]

# Runs first in <head>: records errors of the whole page.
_RECORD = """
window.__check = {errors: [], warnings: [], embeds: []};
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && (t.src || t.href)) window.__check.errors.push('failed to load ' + (t.src || t.href));
  else window.__check.errors.push(String(e.message || e.type) + (e.lineno ? ' (line ' + e.lineno + ')' : ''));
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__check.errors.push('unhandled rejection: ' + String(e.reason && e.reason.message || e.reason));
});
['error', 'warn'].forEach(function (level) {
  var orig = console[level];
  console[level] = function () {
    var msg = Array.prototype.map.call(arguments, String).join(' ');
    (level === 'error' ? window.__check.errors : window.__check.warnings).push(msg);
    return orig.apply(console, arguments);
  };
});
"""

# Runs after the three Vega scripts: every vegaEmbed call of the page goes through it.
_WRAP_EMBED = """
(function () {
  var real = window.vegaEmbed;
  if (typeof real !== 'function') { window.__check.errors.push('vegaEmbed is not defined: vega-embed did not load'); return; }
  window.vegaEmbed = function (el, spec, opts) {
    var p = real(el, spec, Object.assign({}, opts || {}, {renderer: 'svg', actions: false}));
    var values = spec && spec.data && Array.isArray(spec.data.values) ? spec.data.values : [];
    var revs = [];
    values.forEach(function (v) { if (v.rev !== undefined && revs.indexOf(v.rev) < 0) revs.push(v.rev); });
    window.__check.embeds.push({el: String(el), p: p, rows: values.length, revs: revs});
    return p;
  };
})();
"""

_DATA_MARKS = "['line', 'symbol', 'rect', 'area', 'trail', 'arc']"
_MEASURE_PLOTS = """
function texts(node, role, out) {
  if (!node) return out;
  if (node.marktype && node.role === role) (node.items || []).forEach(function (i) { if (i.text) out.push(String(i.text)); });
  (node.items || []).forEach(function (i) { (i.items || []).forEach(function (c) { texts(c, role, out); }); });
  return out;
}
function marks(node, out) {
  if (!node) return out;
  if (node.marktype && node.role === 'mark' && DATA_MARKS.indexOf(node.marktype) >= 0) {
    var n = 0;
    (node.items || []).forEach(function (i) { if (isFinite(i.x) && isFinite(i.y) && (i.opacity === undefined || i.opacity > 0)) n++; });
    out.push({type: node.marktype, name: node.name || '', items: n});
  }
  (node.items || []).forEach(function (i) { (i.items || []).forEach(function (c) { marks(c, out); }); });
  return out;
}
async function measure() {
  var plots = [];
  for (var k = 0; k < window.__check.embeds.length; k++) {
    var e = window.__check.embeds[k], id = e.el.replace(/^#/, '');
    try {
      var res = await e.p;
      await res.view.runAsync();
      var root = res.view.scenegraph().root;
      var svg = document.getElementById(id).querySelector('svg');
      plots.push({id: id, rows: e.rows, revs: e.revs,
                  title: texts(root, 'title-text', []).join(' '), subtitle: texts(root, 'title-subtitle', []).join(' '),
                  axis_titles: texts(root, 'axis-title', []), axis_labels: texts(root, 'axis-label', []),
                  legend_titles: texts(root, 'legend-title', []),
                  marks: marks(root, []), svg: !!svg,
                  width: svg ? svg.getBoundingClientRect().width : 0, height: svg ? svg.getBoundingClientRect().height : 0});
    } catch (err) {
      plots.push({id: id, error: String(err && err.message || err)});
    }
  }
  return {plots: plots,
          divs: Array.prototype.map.call(document.querySelectorAll('body > div[id]'), function (d) { return d.id; })};
}
""".replace("DATA_MARKS", _DATA_MARKS)

_MEASURE_REPORT = """
async function measure() {
  var svgs = Array.prototype.map.call(document.querySelectorAll('svg'), function (svg) {
    var r = svg.getBoundingClientRect(), drawn = 0;
    svg.querySelectorAll('path, line, rect, polyline, polygon, circle, text, use').forEach(function (el) {
      var b = el.getBBox();
      if (b.width > 0 || b.height > 0) drawn++;
    });
    // data marks: what matplotlib clips to the axes (lines, bars, points, images), outside the
    // tick and grid groups and the legend, with a box of non-zero width and height (which leaves
    // out the horizontal and vertical reference lines of an otherwise empty chart)
    var marks = 0;
    svg.querySelectorAll('[clip-path]').forEach(function (el) {
      if (el.closest('[id^="matplotlib.axis"], [id^="legend"]')) return;
      (el.tagName === 'g' ? Array.prototype.slice.call(el.children) : [el]).forEach(function (m) {
        var b = m.getBBox();
        if (b.width > 0 && b.height > 0) marks++;
      });
    });
    var fig = svg.closest('figure'), cap = fig && fig.querySelector('figcaption');
    return {caption: cap ? cap.textContent.trim().slice(0, 80) : '', width: r.width, height: r.height,
            drawn: drawn, marks: marks};
  });
  return {svgs: svgs, figures: document.querySelectorAll('figure').length,
          scripts: document.querySelectorAll('script:not(#render-check-probe)').length};
}
"""

_REPORT_RESULT = """
window.addEventListener('load', function () {
  measure().then(function (r) { return r; }, function (err) { return {probe_error: String(err)}; }).then(function (r) {
    r.errors = window.__check.errors; r.warnings = window.__check.warnings;
    var pre = document.createElement('pre'); pre.id = 'render-check-result';
    pre.hidden = location.hash === '#screenshot';
    pre.textContent = JSON.stringify(r); document.body.appendChild(pre);
  });
});
"""


def chromium() -> str:
    """Path of the Chromium binary; a missing browser is an error, never a skip."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise RuntimeError("chromium not found on PATH: apt-get install chromium (see .ci/run)")


def vega_scripts() -> dict[str, str]:
    """{package: version} installed in tests/browser/node_modules; missing packages are an error."""
    out = {}
    for pkg, build in PACKAGES.items():
        meta, js = NODE_MODULES / pkg / "package.json", NODE_MODULES / pkg / "build" / build
        if not (meta.is_file() and js.is_file()):
            raise RuntimeError(f"{js} not found: run `cd tests/browser && npm ci` (make test does)")
        out[pkg] = json.loads(meta.read_text())["version"]
    return out


def _script(code: str) -> str:
    return f'<script id="render-check-probe">{code}</script>'


def localize_plots_page(page: str) -> str:
    """A ``dvc plots`` page with its CDN scripts pointed at the local npm builds and the probe
    added. Raises if the page loads other versions than those installed."""
    installed = vega_scripts()
    wanted = dict(CDN.findall(page))
    if wanted != installed:
        raise RuntimeError(f"the page loads {wanted} from its CDN, tests/browser/package.json pins {installed}: "
                           "pin the page's versions there")
    page = CDN.sub(lambda m: (NODE_MODULES / m[1] / "build" / PACKAGES[m[1]]).as_uri(), page)
    head = page.index("<head>") + len("<head>")
    # the CDN serves the scripts as UTF-8 (their text holds U+2212 minus signs); a file:// page
    # without a declared charset would decode them as windows-1252
    page = page[:head] + '<meta charset="utf-8">' + _script(_RECORD) + page[head:]
    end = page.index("</head>")
    return page[:end] + _script(_WRAP_EMBED + _MEASURE_PLOTS + _REPORT_RESULT) + page[end:]


def probe_report_page(page: str) -> str:
    """The report page with the probe added first in its <head>."""
    head = page.index("<head>") + len("<head>")
    return page[:head] + _script(_RECORD + _MEASURE_REPORT + _REPORT_RESULT) + page[head:]


def _run(browser: str, url: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout)


def render(html: str | os.PathLike, kind: str, png: str | os.PathLike | None = None,
           window: str = "1400,2400", timeout: float = 120) -> dict:
    """Render ``html`` (kind ``plots`` or ``report``) and return the probe's JSON result;
    with ``png``, also a screenshot of the page (without the probe) at ``window`` CSS pixels."""
    browser = chromium()
    html = Path(html).resolve()
    page = html.read_text(encoding="utf-8")
    in_source = len(re.findall(r"<svg\b", page))
    page = localize_plots_page(page) if kind == "plots" else probe_report_page(page)
    # both kinds of page are self-contained (the local scripts have absolute file URLs)
    tmp = Path(tempfile.mkdtemp(prefix="render-check-"))
    probe = tmp / html.name
    probe.write_text(page, encoding="utf-8")
    try:
        # virtual time: the page runs its timers and promises to the end, then the DOM is dumped
        p = _run(browser, probe.as_uri(), ["--window-size=1400,1000", "--virtual-time-budget=60000",
                                           "--dump-dom"], timeout)
        found = re.search(r'<pre id="render-check-result">(.*?)</pre>', p.stdout, re.S)
        if not found:
            raise RuntimeError(f"{html}: the page did not finish rendering (chromium exit {p.returncode}): "
                               f"{p.stderr.strip()[-2000:]}")
        result = json.loads(htmllib.unescape(found[1]))
        if kind == "report":
            result["svgs_in_source"] = in_source
        if png is not None:
            png = Path(png).resolve()
            png.unlink(missing_ok=True)
            _run(browser, probe.as_uri() + "#screenshot",  # the result <pre> hidden
                 [f"--window-size={window}", "--virtual-time-budget=60000", f"--screenshot={png}"], timeout)
            if not png.is_file() or png.stat().st_size == 0:
                raise RuntimeError(f"chromium wrote no screenshot to {png}")
            result["screenshot"] = str(png)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def problems(result: dict, kind: str, expected: int | None = None) -> list[str]:
    """What is wrong with a render: errors, and plots or figures that drew nothing."""
    out = [f"error: {e}" for e in result.get("errors", [])]
    if "probe_error" in result:
        out.append(f"probe failed: {result['probe_error']}")
    if kind == "plots":
        plots = result.get("plots", [])
        if expected is not None and len(plots) != expected:
            out.append(f"{len(plots)} plots rendered, {expected} expected")
        if len(result.get("divs", [])) != len(plots):
            out.append(f"{len(result.get('divs', []))} plot divs in the page, {len(plots)} embedded")
        for p in plots:
            if "error" in p:
                out.append(f"{p['id']}: {p['error']}")
            elif not any(m["items"] >= 2 for m in p["marks"]):
                drawn = ", ".join(f"{m['name']} ({m['type']}): {m['items']}" for m in p["marks"])
                out.append(f"{p['id']}: no data mark drew 2 or more items (items at finite x, y: {drawn or 'no data mark'})")
            elif not p["svg"] or p["width"] <= 0 or p["height"] <= 0:
                out.append(f"{p['id']}: no visible <svg>")
    else:
        svgs = result.get("svgs", [])
        want = result.get("svgs_in_source") if expected is None else expected
        if len(svgs) != want:
            out.append(f"{len(svgs)} SVG figures in the rendered page, {want} expected")
        if not svgs:
            out.append("no SVG figure in the page")
        if result.get("scripts"):
            out.append(f"{result['scripts']} <script> elements: the report must have none")
        for i, s in enumerate(svgs):
            if s["marks"] < 1 or s["width"] <= 0 or s["height"] <= 0:
                out.append(f"figure {i} ({s['caption']!r}): {s['marks']} data marks drawn, {s['drawn']} elements "
                           f"in all, at {s['width']:.0f}x{s['height']:.0f} px")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["plots", "report"])
    ap.add_argument("html")
    ap.add_argument("--png", help="also save a screenshot here")
    ap.add_argument("--window", default=os.environ.get("REPORT_WINDOW", "1400,2400"), help="width,height of the screenshot")
    ap.add_argument("--json", action="store_true", help="print the probe's result")
    ap.add_argument("--expect", type=int, help="number of plots (plots) or SVG figures (report) the page must draw")
    args = ap.parse_args()
    try:
        result = render(args.html, args.kind, args.png, args.window)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=1))
    bad = problems(result, args.kind, args.expect)
    for line in bad:
        print(f"render check: {args.html}: {line}", file=sys.stderr)
    if not bad:
        n, what = ((len(result["plots"]), "plots") if args.kind == "plots" else (len(result["svgs"]), "SVG figures"))
        print(f"render check: {args.html}: {n} {what} drew their marks, no errors")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
