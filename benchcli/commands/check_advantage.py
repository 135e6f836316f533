"""``python -m bench check-advantage``: score an advantage function against the exact sequence problems."""
from __future__ import annotations

import estimators
from bench import advantage_check
from benchcli.commands.arguments import add_plugin_option, load_plugins
from bench.errors import UserError
from bench.specs import parse_spec
from estimators.sequence import AGGREGATIONS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check-advantage", allow_abbrev=False,
        help="score an advantage function (rewards, lengths, group ids) -> advantages against the exact "
             "sequence problems: bias ratio per difficulty and group size, variance, float32 edge cases")
    parser.add_argument("target", help="module:function or file.py:function taking 1-D tensors (rewards, lengths, "
                                       "group ids) and returning advantages; or a registered advantage "
                                       "estimator's spec, e.g. 'grpo(ddof=0)'")
    parser.add_argument("--against", default=None, metavar="SPEC",
                        help="a registered advantage estimator to compare with, e.g. 'grpo(eps=1e-4)': its "
                             "advantages on the edge cases and its exact ratios must match")
    parser.add_argument("--aggregation", default="seq-mean-token-sum", choices=AGGREGATIONS,
                        help="the loss aggregation the function's advantages are used with")
    parser.add_argument("--group-sizes", default="2,4,16", help="responses per prompt (G) to tabulate, comma-separated")
    add_plugin_option(parser)
    parser.set_defaults(func=command_check_advantage)


def _builder(spec: str, what: str):
    """build(G) for a registered advantage estimator's spec."""
    name, params = parse_spec(spec)
    entry = estimators.ESTIMATORS.entry(name)
    if getattr(entry.cls, "variables", None) != "sequence":
        raise UserError(f"{what} {name!r} is not an advantage estimator of sequence problems")
    estimators.build_estimator(name, params)  # its parameters are checked here, once

    def build(G: int):
        return estimators.build_estimator(name, {**params, "G": G})

    return build


def _group_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"--group-sizes must be integers joined by commas, like 2,4,16, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UserError(f"--group-sizes must be at least 1, got {text!r}")
    return sizes


def command_check_advantage(args) -> int:
    load_plugins(args.plugin)
    sizes = _group_sizes(args.group_sizes)
    against = _builder(args.against, "--against") if args.against else None
    try:
        if ":" in args.target:
            function = advantage_check.load_function(args.target)
            report = advantage_check.check_function(function, args.aggregation, against, sizes)
        else:
            build = _builder(args.target, "estimator")
            report = advantage_check.check(build, None, build(max(2, sizes[0])).coupling, against, sizes)
    except advantage_check.AdvantageFunctionError as exc:
        raise UserError(str(exc)) from None
    print("\n".join(report.lines()))
    return 1 if report.failures else 0
