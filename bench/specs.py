"""Parsing of ``name(key=value,...)`` specs and comma-separated lists of them.

A value ``a|b|c`` is a grid: ``sigmoid-belief-net(depth=1|2|3,width=4|8)`` stands for the six
specs of the product, so a sweep over settings is one command.
"""
from __future__ import annotations

import ast
import itertools
import math
import re
from typing import Any

SPEC = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\((.*)\))?\s*$", re.S)
MAX_GRID = 100_000  # specs one list may expand to; counted before anything is expanded


class SpecError(ValueError):
    """A malformed spec; the message is one line."""


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unbalanced ')' in {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SpecError(f"unbalanced '(' in {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_value(text: str) -> Any:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    except (RecursionError, MemoryError):
        raise SpecError(f"value {text[:20]}... is nested too deeply") from None


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """'bernoulli-target(d=4,t=0.45)' -> ('bernoulli-target', {'d': 4, 't': 0.45}). No grids."""
    specs = parse_spec_grid(text)
    if len(specs) != 1:
        raise SpecError(f"{text!r} is a grid of {len(specs)} specs; give one value per parameter")
    return specs[0]


def parse_spec_grid(text: str) -> list[tuple[str, dict[str, Any]]]:
    """A spec whose values may be grids 'a|b': every combination, in order (last key fastest)."""
    name, choices = _grid_choices(text)
    _check_grid_size(math.prod(len(options) for options in choices.values()), text)
    keys = list(choices)
    return [(name, dict(zip(keys, values))) for values in itertools.product(*choices.values())]


def _check_grid_size(size: int, text: str) -> None:
    if size > MAX_GRID:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise SpecError(f"{shown!r} is a grid of {size:,} specs, more than the limit of {MAX_GRID:,}; "
                        f"split the sweep into smaller grids")


def _grid_choices(text: str) -> tuple[str, dict[str, list[Any]]]:
    """The name and, per parameter, its list of values (one for a plain value)."""
    match = SPEC.match(text)
    if not match or not match.group(1):
        raise SpecError(f"malformed spec {text!r}: expected name or name(key=value,...)")
    name, body = match.group(1), match.group(2)
    choices: dict[str, list[Any]] = {}
    if body is not None and body.strip():
        for item in split_top_level(body):
            key, sep, value = item.partition("=")
            if not sep or not key.strip().isidentifier() or not value.strip():
                raise SpecError(f"malformed parameter {item!r} in {text!r}: expected key=value")
            if key.strip() in choices:
                raise SpecError(f"parameter {key.strip()!r} given twice in {text!r}")
            options = value.split("|")
            if any(not option.strip() for option in options):
                raise SpecError(f"empty value in grid {item!r} in {text!r}: expected key=a|b|c")
            choices[key.strip()] = [parse_value(option) for option in options]
    return name, choices


def parse_spec_list(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Comma-separated specs, grids expanded in order."""
    items = [item for item in split_top_level(text)]
    if not text.strip() or any(not item for item in items):
        raise SpecError(f"empty name in list {text!r}")
    grids = [_grid_choices(item) for item in items]
    _check_grid_size(sum(math.prod(len(options) for options in choices.values()) for _, choices in grids), text)
    return [spec for item in items for spec in parse_spec_grid(item)]


def format_spec(name: str, params: dict[str, Any]) -> str:
    if not params:
        return name
    return f"{name}({','.join(f'{k}={v!r}' if isinstance(v, str) else f'{k}={v}' for k, v in sorted(params.items()))})"
