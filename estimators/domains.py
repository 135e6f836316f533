"""Declared parameter domains, checked in one place (as torch.distributions' ``arg_constraints`` and
scikit-learn's ``_param_validation``).

An estimator or problem class declares the domain of every constructor parameter once::

    class MyEstimator(Estimator):
        domains = {"decay": Interval(0, 1, closed="left"), "K": Count(2), "form": OneOf("a", "b")}

        def __init__(self, decay: float = 0.9, K: int = 4, form: str = "a"): ...

A subclass inherits its parents' declarations and may add or replace some. The registry checks every
declared domain when it builds from a spec (one message format: ``<name>: <param> must be <domain>,
got <value>``), ``bench list`` shows the declarations, and the tests generate their bad-value cases
from them. The type (int, float, bool, str) comes from the annotation and is checked first by the
registry; a domain says which values of that type are allowed. Relations between parameters
(``max_slope >= slope``) stay in ``__init__``: they are not the domain of one parameter.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, ClassVar, Mapping

MAX_DRAWS = 2**20  # samples or draws per estimate an estimator may ask for (K): each is a loss evaluation


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else f"{value:g}"


class Domain:
    """The allowed values of one parameter."""

    def contains(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        """What a value must be, completing '<param> must be ...'."""
        raise NotImplementedError

    def outside(self) -> tuple[Any, ...]:
        """Values of the parameter's type that the domain refuses (for the generated bad-value
        tests); empty where every value of the type is allowed."""
        return ()

    def __str__(self) -> str:
        return self.describe()


@dataclasses.dataclass(frozen=True)
class Interval(Domain):
    """Numbers between ``low`` and ``high`` (None: unbounded); ``closed`` says which ends belong:
    'both', 'left', 'right' or 'neither'. Infinite and NaN values are always refused."""

    low: float | None = None
    high: float | None = None
    closed: str = "both"
    description: str | None = None  # words in place of the generated ones

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and not (value >= self.low if left else value > self.low):
            return False
        if self.high is not None and not (value <= self.high if right else value < self.high):
            return False
        return True

    def describe(self) -> str:
        if self.description:
            return self.description
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            return f"in {'[' if left else '('}{_number(self.low)}, {_number(self.high)}{']' if right else ')'}"
        if self.low is not None:
            return f"a finite number {'>=' if left else '>'} {_number(self.low)}"
        if self.high is not None:
            return f"a finite number {'<=' if right else '<'} {_number(self.high)}"
        return "a finite number"

    def outside(self) -> tuple[Any, ...]:
        out = [math.nan]
        if self.low is not None:
            out.append(float(self.low if self.closed in ("right", "neither") else self.low - max(1, abs(self.low))))
        if self.high is not None:
            out.append(float(self.high if self.closed in ("left", "neither") else self.high + max(1, abs(self.high))))
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class Count(Domain):
    """Integers from ``low`` to ``high`` (None: unbounded); ``zero`` names what 0 means when 0 is
    allowed below ``low`` as a switch ('all', 'off'), as in ``train_subset=0``."""

    low: int = 1
    high: int | None = None
    zero: str | None = None
    why: str | None = None  # a reason shown after the bounds


    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int):
            return False
        if self.zero is not None and value == 0:
            return True
        return value >= self.low and (self.high is None or value <= self.high)

    def describe(self) -> str:
        text = f"at least {_number(self.low)}" + (f" and at most {_number(self.high)}" if self.high is not None else "")
        text += " (an integer)" + (f": {self.why}" if self.why else "")
        return f"0 ({self.zero}) or {text}" if self.zero is not None else text

    def outside(self) -> tuple[Any, ...]:
        below = self.low - 1 if not (self.zero is not None and self.low - 1 == 0) else -1
        return (below,) + ((self.high + 1,) if self.high is not None else ())


@dataclasses.dataclass(frozen=True)
class OneOf(Domain):
    """One of the listed values (strings, or numbers such as ``ddof`` 0 or 1)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any):
        object.__setattr__(self, "values", tuple(values))

    def contains(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) or (isinstance(v, str) and value == v) for v in self.values)

    def describe(self) -> str:
        words = [repr(v) if v == "" else f"{v:g}" if isinstance(v, float) else str(v) for v in self.values]
        return words[0] if len(words) == 1 else "one of " + ", ".join(words)

    def outside(self) -> tuple[Any, ...]:
        if all(isinstance(v, str) for v in self.values):
            return ("no-such-" + "-".join(str(v) for v in self.values[:1]),)
        numbers = [v for v in self.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return (max(numbers) + 1,) if numbers else ()


@dataclasses.dataclass(frozen=True)
class Either(Domain):
    """A value in any of the given domains (``beta_noise``: 0 for off, or greater than 1)."""

    options: tuple[Domain, ...]

    def __init__(self, *options: Domain):
        object.__setattr__(self, "options", tuple(options))

    def contains(self, value: Any) -> bool:
        return any(option.contains(value) for option in self.options)

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)

    def outside(self) -> tuple[Any, ...]:
        return tuple(v for option in self.options for v in option.outside() if not self.contains(v))


@dataclasses.dataclass(frozen=True)
class Optional(Domain):
    """None (``meaning``: what None stands for) or a value in ``domain``."""

    domain: Domain
    meaning: str = "the default"

    def contains(self, value: Any) -> bool:
        return value is None or self.domain.contains(value)

    def describe(self) -> str:
        return f"unset ({self.meaning}) or {self.domain.describe()}"

    def outside(self) -> tuple[Any, ...]:
        return self.domain.outside()


@dataclasses.dataclass(frozen=True)
class Satisfies(Domain):
    """Values a predicate accepts, described in words (a format such as layer sizes '8-6-4'); the
    predicate may raise ValueError with a more precise message."""

    predicate: Callable[[Any], bool]
    description: str
    bad: tuple[Any, ...] = ()

    def contains(self, value: Any) -> bool:
        return bool(self.predicate(value))

    def describe(self) -> str:
        return self.description

    def outside(self) -> tuple[Any, ...]:
        return self.bad


@dataclasses.dataclass(frozen=True)
class Anything(Domain):
    """Every value of the parameter's type (a seed, a flag, a free list checked where it is used);
    declared so that every parameter says what it takes."""

    description: str = "any value of its type"

    def contains(self, value: Any) -> bool:
        return True

    def describe(self) -> str:
        return self.description


# A temperature or a step size: below float32's smallest normal number it underflows to 0 there
# (x / 0 is NaN), so the smallest allowed value is that number.
FLOAT32_TINY = 1.1754943508222875e-38
STRICTLY_POSITIVE = Interval(FLOAT32_TINY, None, closed="left",
                             description=f"a finite number > 0 (at least {FLOAT32_TINY:.3g})")
SEED = Anything("any integer (a seed)")
FLAG = Anything("true or false")
POSITIVE = Interval(0, None, closed="neither")
NON_NEGATIVE = Interval(0, None)
UNIT_INTERVAL_OPEN_RIGHT = Interval(0, 1, closed="left")  # a decay: [0, 1)


def declared_domains(cls: type) -> dict[str, Domain]:
    """The domains a class declares, its bases' first (a subclass adds or replaces)."""
    out: dict[str, Domain] = {}
    for base in reversed(cls.__mro__):
        declared = vars(base).get("domains")
        if isinstance(declared, Mapping):
            out.update(declared)
    return out


class DomainError(ValueError):
    """A parameter outside its declared domain; the message is '<param> must be <domain>, got <value>'."""


def check_domains(cls: type, params: Mapping[str, Any]) -> None:
    """Raise DomainError for the first parameter in ``params`` outside its declared domain."""
    domains = declared_domains(cls)
    for key, value in params.items():
        domain = domains.get(key)
        if domain is None:
            continue
        try:
            ok = domain.contains(value)
        except ValueError as exc:  # a format check that says precisely what is wrong
            raise DomainError(f"{key}: {' '.join(str(exc).split())}") from None
        except TypeError:
            ok = False
        if not ok:
            raise DomainError(f"{key} must be {domain.describe()}, got {value!r}")


class DeclaredDomains:
    """Mixin for the estimator and problem bases: every subclass's ``__init__`` checks its arguments
    against the declared domains before it runs, so a class built directly (from Python, not the
    registry) refuses the same values with the same message."""

    domains: ClassVar[Mapping[str, Domain]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = vars(cls).get("__init__")
        if init is None or getattr(init, "_checks_domains", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def checked_init(self, *args, **kwargs):
            if type(self) is cls or not getattr(self, "_domains_checked", False):
                try:
                    bound = signature.bind(self, *args, **kwargs)
                except TypeError:
                    bound = None
                if bound is not None:
                    bound.apply_defaults()
                    check_domains(type(self), {k: v for k, v in bound.arguments.items() if k != "self"})
                self.__dict__["_domains_checked"] = True
            init(self, *args, **kwargs)

        checked_init._checks_domains = True
        cls.__init__ = checked_init
