"""Name -> class registries for estimators and problems, with plugin discovery.

Registration works like torch's ``register_kl``: a decorator on the class. Third-party code joins
through the entry-point groups ``bench.estimators`` / ``bench.problems`` or a file/module given
with ``--plugin``. A plugin that fails to import is recorded in ``broken`` and never raises.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import math
import re
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

from estimators.domains import DomainError, check_domains, declared_domains

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
BUILTIN = "built-in"


class RegistryError(ValueError):
    """A user-facing lookup or parameter error; its message is one line."""


@dataclasses.dataclass
class Entry:
    name: str
    cls: type
    description: str
    source: str

    def parameters(self) -> dict[str, dict[str, Any]]:
        """Constructor keyword parameters with their defaults, type names and declared domains
        (None where the class declares none: a plugin may not)."""
        domains = declared_domains(self.cls)
        return {key: {**spec, "domain": domains.get(key)} for key, spec in constructor_parameters(self.cls).items()}


@dataclasses.dataclass
class BrokenPlugin:
    kind: str
    source: str
    error: str


_current_source: list[str] = []


@contextlib.contextmanager
def loading_source(source: str) -> Iterator[None]:
    """Registrations made inside this block are attributed to ``source``."""
    _current_source.append(source)
    try:
        yield
    finally:
        _current_source.pop()


def _source_of(cls: type, builtin_modules: tuple[str, ...] = ()) -> str:
    if _current_source:
        return _current_source[-1]
    top = cls.__module__.split(".")[0]
    if top in ("estimators", "problems") or cls.__module__ in builtin_modules:
        return BUILTIN
    return f"module {cls.__module__}"


def constructor_parameters(cls: type) -> dict[str, dict[str, Any]]:
    hints = typing.get_type_hints(cls.__init__) if cls.__init__ is not object.__init__ else {}
    out: dict[str, dict[str, Any]] = {}
    for pname, p in inspect.signature(cls.__init__).parameters.items():
        if pname == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(pname, Any)
        type_name = getattr(annotation, "__name__", str(annotation))
        out[pname] = {"default": None if p.default is p.empty else p.default, "type": type_name,
                      "required": p.default is p.empty}
    return out


# Every float parameter must be a normal float32 number or 0: computations run in float32 by
# default, where anything smaller becomes 0 and anything larger becomes inf (then NaN).
FLOAT_TINY = 1.1754943508222875e-38
FLOAT_HUGE = 3.4028234663852886e38
INT_LIMIT = 2**63  # integers are stored and handed to torch as 64-bit integers


def _declared_type(annotation: Any, default: Any) -> tuple[Any, bool]:
    """(bool/int/float/str or the annotation itself, whether None is allowed): ``X | None`` and
    ``Optional[X]`` unwrap to X; an unannotated parameter takes the type of its default."""
    args = typing.get_args(annotation)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    if annotation is Any and default is not None and type(default) in (bool, int, float):
        return type(default), False
    return annotation, False


def _coerce(value: Any, annotation: Any, where: str, default: Any = None) -> Any:
    """Check ``value`` against the parameter's declared type; one message format for all of them:
    '<name>: <param> must be <what>, got <value>'."""
    annotation, optional = _declared_type(annotation, default)
    if value is None and optional:
        return None
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise RegistryError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise RegistryError(f"{where} must be an integer, got {value!r}")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise RegistryError(f"{where} must be an integer that fits in 64 bits, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RegistryError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise RegistryError(f"{where} must be a finite number, got {value!r}")
        if number != 0 and not FLOAT_TINY <= abs(number) <= FLOAT_HUGE:
            raise RegistryError(f"{where} must be 0 or of magnitude between {FLOAT_TINY:.2g} and {FLOAT_HUGE:.2g} "
                                f"(a normal float32 number), got {value!r}")
        return number
    if annotation is str:
        return str(value)
    return value


class Registry:
    """Names to classes for one kind ('estimator', 'problem', 'experiment'), plus its entry-point group."""

    def __init__(self, kind: str, group: str, builtin_modules: tuple[str, ...]):
        self.kind = kind
        self.group = group
        self.builtin_modules = builtin_modules
        self._entries: dict[str, Entry] = {}
        self.broken: list[BrokenPlugin] = []
        self._builtins_loaded = False
        self._entry_points_loaded = False

    def register(self, name: str, description: str | None = None) -> Callable[[type], type]:
        """Class decorator: register ``cls`` under the kebab-case ``name``."""
        if not NAME_PATTERN.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be kebab-case (e.g. 'my-estimator')")

        def decorator(cls: type) -> type:
            doc = description or (inspect.getdoc(cls) or "").strip().splitlines()[0:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            existing = self._entries.get(name)
            if existing is not None and existing.cls is not cls and existing.cls.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.kind} {name!r} is already registered by {existing.source}")
            cls.name = name
            cls.description = text
            self._entries[name] = Entry(name, cls, text, _source_of(cls, self.builtin_modules))
            return cls

        return decorator

    # -- discovery -------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self.builtin_modules:
                importlib.import_module(module)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            source = f"entry point {ep.name} = {ep.value}" + (f" ({dist.name})" if dist else "")
            try:
                with loading_source(source):
                    obj = ep.load()
                    if inspect.isclass(obj) and ep.name not in self._entries:
                        self.register(ep.name)(obj)
            except Exception as exc:  # a broken plugin is reported, never fatal
                self.broken.append(BrokenPlugin(self.kind, source, _one_line(exc)))

    def ensure_loaded(self) -> None:
        self._load_builtins()
        self._load_entry_points()

    # -- lookup ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.ensure_loaded()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self.ensure_loaded()
        return [self._entries[n] for n in sorted(self._entries)]

    def entry(self, name: str) -> Entry:
        self.ensure_loaded()
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = sorted(self._entries)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        return f"unknown {self.kind} {name!r}: {hint}valid: {', '.join(names)}"

    def build(self, name: str, params: dict[str, Any] | None = None) -> Any:
        """Instantiate ``name`` with ``params`` checked against its constructor signature."""
        entry = self.entry(name)
        params = dict(params or {})
        spec = entry.parameters()
        hints = typing.get_type_hints(entry.cls.__init__) if spec else {}
        for key in params:
            if key not in spec:
                valid = ", ".join(spec) or "none"
                raise RegistryError(f"{self.kind} {name!r} has no parameter {key!r}: valid: {valid}")
        coerced = {k: _coerce(v, hints.get(k, Any), f"{name}: {k}", spec[k]["default"]) for k, v in params.items()}
        try:  # the declared domains (see estimators.domains), one message format for every class
            check_domains(entry.cls, coerced)
        except DomainError as exc:
            raise RegistryError(f"{name}: {exc}") from None
        try:
            instance = entry.cls(**coerced)
        except ValueError as exc:  # the class's own range check: '<param> must be ..., got ...'
            raise RegistryError(f"{name}: {' '.join(str(exc).split())}") from None
        except (TypeError, OverflowError) as exc:
            raise RegistryError(f"{name}: {_one_line(exc)}") from None
        except (RuntimeError, MemoryError) as exc:  # e.g. an allocation far too large for memory
            raise RegistryError(f"{name}: cannot be built with {params}: {_one_line(exc)}") from None
        instance.spec_params = {**{k: v["default"] for k, v in spec.items()}, **coerced}
        return instance

    def resolved_params(self, instance: Any) -> dict[str, Any]:
        """The full parameter set of a built instance (defaults filled in), for run configs."""
        return dict(instance.spec_params)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (RegistryError,)) else str(exc)
    return " ".join(text.split())


def load_plugin(target: str, registries: tuple[Registry, ...]) -> str | None:
    """Import a plugin given as a .py file path or a module name; return an error line or None."""
    for registry in registries:
        registry.ensure_loaded()
    path = Path(target)
    source = f"file {path}" if target.endswith(".py") else f"module {target}"
    try:
        with loading_source(source):
            if target.endswith(".py"):
                if not path.is_file():
                    return f"plugin file not found: {target}"
                module_name = f"bench_plugin_{abs(hash(str(path.resolve())))}"
                spec = importlib.util.spec_from_file_location(module_name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(target)
    except Exception as exc:
        for registry in registries[:1]:
            registry.broken.append(BrokenPlugin("plugin", source, _one_line(exc)))
        return f"plugin {target} failed to load: {_one_line(exc)}"
    return None
