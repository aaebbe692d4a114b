"""Named registries, the one mechanism of all three packages (after timm's).

Every name-to-thing table of the project is a :class:`Registry`: the runtimes
(``profilers.RUNTIMES``), the layer latency models (``latency_models.MODELS``),
and in hwprune the importance criteria, the selectors and the model zoo. It
lives here, in the bottom package, because profilers and latency_models must
not import hwprune.

    SELECTORS = Registry("selector")

    @SELECTORS.register("greedy", objective="channel scores")
    def greedy(problem, **options): ...

    RUNTIMES.register("tensorrt", "profilers.tensorrt_rt:TensorRTRuntime", requires=("tensorrt",))
    RUNTIMES.list("torch-*")          # ['torch-cpu', 'torch-cuda']: nothing imported
    RUNTIMES.create("ort-cpu", threads=1)

An entry is an object (a class, a function) or a lazy reference, a string
``"module:attr"`` imported only when :meth:`Registry.get` or
:meth:`Registry.create` needs it, so listing (and :meth:`Registry.metadata`)
never imports an optional package such as tensorrt. Keyword metadata (a help
line, default arguments, ``needs_data``) is stored as given. An unknown name
raises :class:`UnknownName` (a ``KeyError``) whose message lists the known
names; a registry may raise a subclass of it instead (hwprune's also subclass
its ``UserError``, so the CLI prints them as one ``error:`` line).

Tests swap entries with :meth:`Registry.registered`, a context manager that
puts the previous entry (or none) back.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

_MISSING = object()


class UnknownName(KeyError):
    """A name no entry of the registry has; the message lists the known ones
    (``name`` and ``known`` keep them)."""

    def __init__(self, message: str, name: str = "", known: tuple[str, ...] = ()):
        super().__init__(message)
        self.name, self.known = name, tuple(known)

    def __str__(self) -> str:  # KeyError's own would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry:
    """One registered name: ``target`` is the object or its ``"module:attr"``."""

    name: str
    target: object
    metadata: Mapping[str, object]

    @property
    def lazy(self) -> bool:
        return isinstance(self.target, str)

    def resolve(self) -> object:
        """The object; a lazy entry is imported now (``ImportError`` if it cannot be)."""
        if not self.lazy:
            return self.target
        module, _, attr = self.target.partition(":")
        return functools.reduce(getattr, attr.split("."), importlib.import_module(module))


class Registry:
    """Names to objects or lazy references, with metadata (module docstring).

    ``kind`` names what is registered in messages ("unknown selector 'x'");
    ``sort=False`` lists in registration order (where that order is the
    documented one) instead of sorted; ``error`` is the :class:`UnknownName`
    subclass an unknown name raises."""

    def __init__(self, kind: str, *, sort: bool = True, error: type[UnknownName] = UnknownName):
        self.kind, self.sort, self.error = kind, sort, error
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: object = _MISSING, /, **metadata):
        """Register ``obj`` (or ``"module:attr"``) under ``name``, replacing an
        entry of that name; without ``obj``, a decorator that registers what
        it decorates. Returns ``obj``."""
        if obj is _MISSING:
            return functools.partial(self.register, name, **metadata)
        if isinstance(obj, str) and not _is_reference(obj):
            raise ValueError(f"lazy {self.kind} {name!r} must be 'module:attr', not {obj!r}")
        self._entries[name] = Entry(name, obj, MappingProxyType(dict(metadata)))
        return obj

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = self.list()
            shown = f"choose one of {', '.join(known)}" if known else f"no {self.kind} is registered"
            raise self.error(f"unknown {self.kind} {name!r}; {shown}", name, tuple(known)) from None

    def check(self, name: str) -> str:
        """``name`` if it is registered, else the unknown-name error (imports nothing)."""
        return self.entry(name).name

    def get(self, name: str) -> object:
        """The object registered as ``name`` (a lazy one is imported now)."""
        return self.entry(name).resolve()

    def create(self, name: str, *args, **kwargs):
        """Call the object registered as ``name`` with the arguments."""
        return self.get(name)(*args, **kwargs)

    def metadata(self, name: str) -> Mapping[str, object]:
        """The keywords given at registration (read-only; imports nothing)."""
        return self.entry(name).metadata

    def list(self, pattern: str = "*") -> list[str]:
        """Names matching the ``fnmatch`` wildcard ``pattern`` (imports nothing)."""
        names = [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]
        return sorted(names) if self.sort else names

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.list())})"

    @contextmanager
    def registered(self, name: str, obj: object, /, **metadata) -> Iterator[object]:
        """Register ``obj`` as ``name`` for the ``with`` block, then restore the
        entry it replaced (or remove it)."""
        previous = self._entries.get(name)
        self.register(name, obj, **metadata)
        try:
            yield obj
        finally:
            if previous is None:
                self._entries.pop(name, None)
            else:
                self._entries[name] = previous


def _is_reference(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep and module and attr) and all(p.isidentifier() for p in (*module.split("."), *attr.split(".")))

