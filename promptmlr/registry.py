"""One small registry for everything chosen by name: methods, datasets and backbone sources.

As in timm (``register_model`` / ``list_models`` / ``create_model``), an entry registers itself with
a decorator in its own module, so adding a method or a dataset is adding one file. Three rules hold
for every kind of entry:

- a name is registered once: a second registration under it is refused, naming both modules, so a
  plug-in cannot silently replace a built-in;
- the built-in entries are registered by importing their modules, which happens the first time the
  registry is asked (so ``import promptmlr`` and ``promptmlr --help`` stay fast);
- every list of names (the CLI's help, the report's order, the benchmarks' defaults) comes from the
  registry, never from a hand-written copy.

Names are listed built-ins first, in the order of ``builtin_modules`` (the order in which results
tables show methods), then the others in registration order; :meth:`Registry.names` sorts on request.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from promptmlr.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind (``kind`` names it in messages, e.g. "method").

    ``builtin_modules`` are imported on first use; each registers its entries with :meth:`register`.
    ``error`` is the exception an unknown name raises (a :class:`~promptmlr.errors.PromptMLRError`).
    """

    def __init__(self, kind: str, builtin_modules: tuple[str, ...] = (),
                 error: type[Exception] = ConfigError) -> None:
        self.kind = kind
        self.builtin_modules = builtin_modules
        self.error = error
        self._entries: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str, entry: T, owner: str | None = None) -> T:
        """Add ``entry`` under ``name``; a name already taken is refused (a programming error)."""
        owner = owner or getattr(entry, "__module__", "?")
        if owner not in self.builtin_modules:
            self._load_builtins()  # so that a plug-in cannot take a built-in's name before it loads
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered by {self._owners[name]}; "
                             f"{owner} must choose another name")
        self._entries[name] = entry
        self._owners[name] = owner
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator("name")``: register the decorated object under ``name``."""
        return lambda entry: self.register(name, entry)

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: a built-in module may look itself up while it is imported
            try:
                for module in self.builtin_modules:
                    importlib.import_module(module)
            except BaseException:
                self._loaded = False  # the next lookup tries again and shows the same import error
                raise

    def names(self, sort: bool = False) -> list[str]:
        """Every registered name: built-ins in the order of their modules, then the others in
        registration order (``sort``: alphabetically)."""
        self._load_builtins()
        if sort:
            return sorted(self._entries)
        modules = list(self.builtin_modules)
        return sorted(self._entries, key=lambda name: modules.index(self._owners[name])
                      if self._owners[name] in modules else len(modules))

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name lists the known ones."""
        self._load_builtins()
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; available: {', '.join(self.names(sort=True))}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs in the order of :meth:`names`."""
        return [(name, self._entries[name]) for name in self.names()]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a temporary entry clean up with this)."""
        self._entries.pop(name, None)
        self._owners.pop(name, None)
