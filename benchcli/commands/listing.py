"""``python -m bench list``: the installed estimators and problems, with traits, parameters and source,
in lines that fit the terminal (100 columns when the output is not one)."""
from __future__ import annotations

import json
import textwrap

import estimators
import problems
from benchcli.commands.arguments import add_plugin_option, load_plugins
from bench.summary import terminal_width

NAME_WIDTH = 26  # the name column
MIN_WIDTH = 40   # narrower terminals get lines of this width


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("list", allow_abbrev=False,
                                   help="estimators and problems, with traits, parameters and source")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_plugin_option(parser)
    parser.set_defaults(func=command_list)


def _describe(entry, kind: str) -> dict:
    parameters = entry.parameters()
    item = {"name": entry.name, "kind": kind, "source": entry.source, "description": entry.description,
            "parameters": {k: v["default"] for k, v in parameters.items()},
            "domains": {k: None if v["domain"] is None else v["domain"].describe() for k, v in parameters.items()}}
    if kind == "estimator":
        item["traits"] = entry.cls.declared_traits().as_dict()
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
    for line in text_listing(items, broken, max(terminal_width(), MIN_WIDTH)):
        print(line)
    return 0


def text_listing(items: list[dict], broken: list[dict], width: int) -> list[str]:
    """The listing as lines of at most ``width`` characters: per item its name and description,
    then its parameters, their declared domains, traits (every field of its Traits) and source, each wrapped under the name."""
    name_width = min(NAME_WIDTH, width // 4)
    lines = []

    def block(first: str, rest: str, text: str) -> None:
        lines.extend(textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest,
                                   break_on_hyphens=False) or [first.rstrip()])

    for kind in ("estimator", "problem"):
        lines.append(f"{kind.upper()}S")
        for item in (i for i in items if i["kind"] == kind):
            under = " " * (name_width + 3)
            block("  ", under, f"{item['name']:<{name_width}} {item['description']}")
            params = ", ".join(f"{k}={v!r}" for k, v in item["parameters"].items()) or "-"
            block(under, under + "  ", f"parameters: {params}")
            domains = "; ".join(f"{k} {v}" for k, v in item["domains"].items() if v is not None)
            if domains:
                block(under, under + "  ", f"domains: {domains}")
            if kind == "estimator":
                block(under, under + "  ", "traits: " + " ".join(f"{k}={v}" for k, v in item["traits"].items()))
            block(under, under + "  ", f"source: {item['source']}")
        lines.append("")
    if broken:
        lines.append("BROKEN PLUGINS (skipped)")
        for b in broken:
            block("  ", "    ", f"{b['source']}: {b['error']}")
    return lines
