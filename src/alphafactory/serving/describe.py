"""``alphafactory info``: what a bundle holds, as ``GET /v1/model`` of ``alphafactory serve`` says it."""
from __future__ import annotations

import argparse
import json

from alphafactory.serving.inference import list_models, load_bundle, model_info


def describe(path: str) -> dict:
    """:func:`~alphafactory.serving.inference.model_info` of the verified bundle at ``path``, and its
    forecast components."""
    bundle = load_bundle(path)
    return {**model_info(bundle), "components": list_models(bundle)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="bundle", help="bundle directory (default: bundle)")
    parser.add_argument("--json", action="store_true", help="the whole description as JSON")


def run(args: argparse.Namespace) -> int:
    info = describe(args.models)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    data = info.get("data") or {}
    print(f"bundle       {info['path']}  sha256 {info['bundle_sha256']}  format v{info['bundle_version']}")
    models = ", ".join(f"{m['name']} ({m['family']}, {m['input_kind']})" for m in info["base_models"])
    print(f"base models  {models}")
    blend = info["blender"]
    print(f"blend        headline {blend['primary']}; methods {', '.join(blend['methods'])}")
    print(f"horizons     {info['horizons']} bars of {info['frequency']}; lookback {info['lookback']}; "
          f"{info['feature_count']} features; needs {info['min_bars']} bars per symbol")
    print(f"data         {data.get('start')} .. {data.get('end')} ({data.get('rows')} bars, source "
          f"{data.get('source')}); data_hash {data.get('data_hash')}")
    print(f"symbols      {len(info['symbols'])}: {', '.join(info['symbols'][:20])}")
    return 0
