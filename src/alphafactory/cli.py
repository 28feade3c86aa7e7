"""`alphafactory` command line: list models, forecast from raw bars, serve a bundle, audit for leakage.

Each subcommand lives in the module that implements it; this file only wires them up.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand → (module, help). The module provides add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "models": ("alphafactory.cli", "list the registered model families and ensembles"),
    "predict": ("alphafactory.serving.inference", "forecast from raw bars with a trained bundle"),
    "tune-worker": ("alphafactory.tune", "join a tune study (SQLite or PostgreSQL storage) and run its trials"),
    "audit": ("alphafactory.evaluation.audit", "leakage audit: causality, purged splits, permuted/noise/planted-signal fits"),
    "serve": ("alphafactory.serving.app", "serve a bundle's forecasts over HTTP (FastAPI + uvicorn)"),
    "info": ("alphafactory.serving.describe", "what a bundle holds: models, horizons, lookback, hash, data"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    """`alphafactory models`: name, family, input kind, tasks and params block of every registered
    base model, then of every ensemble (a blend method, which combines the base models' forecasts)."""
    import json

    from alphafactory import models

    rows = [{"name": s.name, "kind": "base", "family": s.family, "input_kind": s.input_kind, "tasks": list(s.tasks),
             "params": f"{s.family}.{s.name}"}
            for s in sorted(models.REGISTRY.values(), key=lambda s: (s.family, s.name))]
    rows += [{"name": e.name, "kind": "ensemble", "family": e.family, "input_kind": e.input_kind,
              "tasks": list(e.tasks), "params": e.params, "summary": e.summary} for e in models.ENSEMBLES.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<16}{'family':<12}{'input':<11}{'tasks':<28}params")
    for r in rows:
        print(f"{r['name']:<16}{r['family']:<12}{r['input_kind']:<11}{', '.join(r['tasks']):<28}{r['params']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="alphafactory", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # Only the chosen subcommand's module is imported (the first word not starting with "-": the
    # top-level parser has no option taking a value), so `alphafactory predict` does not pay for
    # the imports of `audit` (scipy.stats) to build a parser it does not use.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from alphafactory.stage import user_errors

    try:
        return importlib.import_module(args.module).run(args)
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
