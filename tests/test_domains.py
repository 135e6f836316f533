"""Declared parameter domains: every built-in estimator and problem declares the domain of each
constructor parameter, the defaults lie inside, and every value the declarations refuse gives the
one-line error (registry, direct construction and the command line). The bad-value cases are
generated from the declarations, so a new class gets them without writing any."""
from __future__ import annotations

import math

import pytest

import estimators
import problems
from conftest import one_line_error
from estimators.domains import (FLAG, STRICTLY_POSITIVE, Anything, Count, DeclaredDomains, DomainError, Either,
                                Interval, OneOf, Optional, check_domains, declared_domains)
from estimators.registry import BUILTIN, RegistryError

REGISTRIES = {"estimator": estimators.ESTIMATORS, "problem": problems.PROBLEMS}
BUILTINS = [(kind, entry.name) for kind, registry in REGISTRIES.items() for entry in registry.entries()
            if entry.source == BUILTIN]


def _bad_cases() -> list[tuple[str, str, str, object]]:
    cases = []
    for kind, name in BUILTINS:
        for param, domain in declared_domains(REGISTRIES[kind].entry(name).cls).items():
            if param in REGISTRIES[kind].entry(name).parameters():
                cases.extend((kind, name, param, value) for value in domain.outside())
    return cases


BAD = _bad_cases()


def _id(case) -> str:
    kind, name, param, value = case
    return f"{name}-{param}={value!r}"


@pytest.mark.parametrize("kind, name", BUILTINS, ids=[n for _, n in BUILTINS])
def test_every_parameter_declares_its_domain_and_the_default_lies_inside(kind, name):
    entry = REGISTRIES[kind].entry(name)
    domains = declared_domains(entry.cls)
    for param, spec in entry.parameters().items():
        assert param in domains, f"{name}: parameter {param!r} declares no domain (add it to the class's `domains`)"
        assert spec["domain"] is domains[param]
        if not spec["required"]:
            assert domains[param].contains(spec["default"]), (name, param, spec["default"], domains[param])


def test_the_bad_values_cover_every_kind_of_domain():
    # more than one refused value for most parameters, and every registered name has at least one
    assert len(BAD) > 250
    refused = {name for _, name, _, _ in BAD}
    without = {name for _, name in BUILTINS} - refused
    # only classes whose every parameter takes any value of its type (flags, seeds) or none at all
    for name in without:
        kind = next(k for k, n in BUILTINS if n == name)
        entry = REGISTRIES[kind].entry(name)
        assert all(not entry.parameters()[p]["domain"].outside() for p in entry.parameters()), name


@pytest.mark.parametrize("kind, name, param, value", BAD, ids=[_id(c) for c in BAD])
def test_a_value_outside_the_domain_is_the_one_line_error_from_the_declaration(kind, name, param, value):
    registry = REGISTRIES[kind]
    domain = declared_domains(registry.entry(name).cls)[param]
    with pytest.raises(RegistryError) as info:
        registry.build(name, {param: value})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}: {param} must be ")
    if not (isinstance(value, float) and math.isnan(value)):  # the registry's type check speaks first for NaN
        assert message == f"{name}: {param} must be {domain.describe()}, got {value!r}"


@pytest.mark.parametrize("kind, name", BUILTINS, ids=[n for _, n in BUILTINS])
def test_direct_construction_refuses_the_same_values(kind, name):
    cls = REGISTRIES[kind].entry(name).cls
    cases = [(param, value) for k, n, param, value in BAD if (k, n) == (kind, name)]
    for param, value in cases:
        with pytest.raises(ValueError, match=f"^{param} must be "):
            cls(**{param: value})


def test_the_command_line_prints_the_declared_domain(invoke, tmp_path):
    code, _, err = invoke("run", "--estimators", "reinforce-loo(K=1)", "--problems", "bernoulli-target",
                          "--db", tmp_path / "r.db")
    one_line_error(code, err, "reinforce-loo: K must be at least 2 and at most 1,048,576 (an integer), got 1")
    assert not (tmp_path / "r.db").exists()
    code, _, err = invoke("run", "--estimators", "reinforce", "--problems", "bernoulli-target(t=1.5)",
                          "--db", tmp_path / "r.db")
    one_line_error(code, err, "bernoulli-target: t must be in [0, 1], got 1.5")


# -- the domain types themselves ------------------------------------------------------------------------
@pytest.mark.parametrize("domain, inside, outside, words", [
    (Interval(0, 1), [0, 0.5, 1], [-0.1, 1.1, math.nan, math.inf], "in [0, 1]"),
    (Interval(0, 1, closed="left"), [0, 0.999], [1, -1e-9], "in [0, 1)"),
    (Interval(0, 0.5, closed="neither"), [0.25], [0, 0.5], "in (0, 0.5)"),
    (Interval(0, None, closed="neither"), [1e-30, 1e30], [0, -1], "a finite number > 0"),
    (Interval(0, None), [0, 3], [-1e-12], "a finite number >= 0"),
    (Interval(), [-1e30, 0], [math.nan, -math.inf], "a finite number"),
    (STRICTLY_POSITIVE, [1.2e-38, 1.0], [1e-45, 0.0, -1.0], "a finite number > 0 (at least 1.18e-38)"),
    (Count(2, 2**20), [2, 2**20], [1, 2**20 + 1, 2.5, True], "at least 2 and at most 1,048,576 (an integer)"),
    (Count(1, 50_000, zero="all"), [0, 1, 50_000], [-1, 50_001], "0 (all) or at least 1 and at most 50,000 (an integer)"),
    (Count(2, why="two draws"), [2], [1], "at least 2 (an integer): two draws"),
    (OneOf("a", "b"), ["a", "b"], ["c", ""], "one of a, b"),
    (OneOf(0, 1), [0, 1], [2, -1], "one of 0, 1"),
    (Either(OneOf(0.0), Interval(1, None, closed="neither")), [0.0, 1.5], [0.5, 1.0], "0 or a finite number > 1"),
    (Optional(Interval(0, 1), "from the estimator"), [None, 0.5], [2.0], "unset (from the estimator) or in [0, 1]"),
])
def test_domains_contain_and_describe_exactly(domain, inside, outside, words):
    assert all(domain.contains(v) for v in inside), inside
    assert not any(domain.contains(v) for v in outside), outside
    assert domain.describe() == words
    assert not any(domain.contains(v) for v in domain.outside())


def test_anything_refuses_nothing_and_offers_no_bad_value():
    assert FLAG.contains(True) and Anything().contains(object()) and FLAG.outside() == ()


def test_subclasses_inherit_and_replace_declarations_and_init_checks_once():
    calls = []

    class Base(DeclaredDomains):
        domains = {"a": Count(1), "b": Interval(0, 1)}

        def __init__(self, a: int = 1, b: float = 0.5):
            calls.append("base")

    class Child(Base):
        domains = {"a": Count(5)}

        def __init__(self, a: int = 5, b: float = 0.5):
            super().__init__(a - 4, b)  # the parent's own value would be out of the child's domain
            calls.append("child")

    assert declared_domains(Child) == {"a": Count(5), "b": Interval(0, 1)}
    Child(a=6)
    assert calls == ["base", "child"]
    with pytest.raises(DomainError, match=r"^a must be at least 5 \(an integer\), got 4$"):
        Child(a=4)
    with pytest.raises(DomainError, match=r"^b must be in \[0, 1\], got 2$"):
        Base(b=2)
    check_domains(Child, {"unknown": 1})  # a parameter with no declaration is not the domain's business
