"""``python -m bench list``: the installed estimators and problems, with traits, parameters and source."""
from __future__ import annotations

import json

import estimators
import problems
from bench.commands.arguments import add_plugin_option, load_plugins

TRAITS = ("unbiased", "loss_evals", "needs_loss_backprop", "binary_forward", "randomness", "stateful",
          "has_parameters", "activation", "variables")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("list", allow_abbrev=False,
                                   help="estimators and problems, with traits, parameters and source")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_plugin_option(parser)
    parser.set_defaults(func=command_list)


def _describe(entry, kind: str) -> dict:
    item = {"name": entry.name, "kind": kind, "source": entry.source, "description": entry.description,
            "parameters": {k: v["default"] for k, v in entry.parameters().items()}}
    if kind == "estimator":
        item["traits"] = {k: getattr(entry.cls, k) for k in TRAITS}
    return item


def command_list(args) -> int:
    load_plugins(args.plugin)
    items = ([_describe(e, "estimator") for e in estimators.ESTIMATORS.entries()]
             + [_describe(e, "problem") for e in problems.PROBLEMS.entries()])
    broken = [{"kind": b.kind, "source": b.source, "error": b.error}
              for b in estimators.ESTIMATORS.broken + problems.PROBLEMS.broken]
    if args.json:
        print(json.dumps({"items": items, "broken_plugins": broken}, indent=2, default=str))
        return 0
    for kind in ("estimator", "problem"):
        print(f"{kind.upper()}S")
        for item in (i for i in items if i["kind"] == kind):
            params = ", ".join(f"{k}={v!r}" for k, v in item["parameters"].items()) or "-"
            print(f"  {item['name']:<26} {item['description']}")
            print(f"  {'':<26} parameters: {params}")
            if kind == "estimator":
                traits = item["traits"]
                print(f"  {'':<26} traits: unbiased={traits['unbiased']} loss_evals={traits['loss_evals']} "
                      f"needs_loss_backprop={traits['needs_loss_backprop']} binary_forward={traits['binary_forward']} "
                      f"randomness={traits['randomness']} stateful={traits['stateful']} "
                      f"has_parameters={traits['has_parameters']} activation={traits['activation']}")
            print(f"  {'':<26} source: {item['source']}")
        print()
    if broken:
        print("BROKEN PLUGINS (skipped)")
        for b in broken:
            print(f"  {b['source']}: {b['error']}")
    return 0
