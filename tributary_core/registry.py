"""Plugin registries: the one module that talks to pluggy and stevedore.

Two kinds of extension point:

* **Many contributors** (semantic types, loss heads): pluggy hooks (see
  :mod:`tributary_core.hookspecs`). Plugins are found through the entry-point groups
  ``tributary.semantic_types`` and ``tributary.losses``; every class they return is collected
  and a name registered twice is an error naming both sources.
* **Pick one** (embedder backends): the entry-point group ``tributary.embedders``, one entry
  point per backend, resolved by name with a stevedore ``DriverManager`` so only the chosen
  backend is imported.

Built-in plugins are entry points of the ``tributary`` distribution itself and take the same
path. Autoloading of *third-party* plugins is controlled by two environment variables:

``TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD=1``
    load only the built-in plugins.
``TRIBUTARY_PLUGINS=dist-a,dist-b``
    load third-party plugins only from these distributions (empty: none).
"""

from __future__ import annotations

import functools
import importlib.metadata as importlib_metadata
import os
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import attrs
import pluggy

from tributary_core.embedder import Embedder
from tributary_core.errors import PluginError
from tributary_core.loss import LossHead
from tributary_core.semantic_type import SemanticType

__all__ = [
    "hookimpl",
    "hookspec",
    "Registry",
    "Source",
    "Component",
    "get_registry",
    "reset_registry",
    "GROUP_SEMANTIC_TYPES",
    "GROUP_LOSSES",
    "GROUP_EMBEDDERS",
    "ENV_DISABLE_AUTOLOAD",
    "ENV_PLUGINS",
]

PROJECT = "tributary"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

GROUP_SEMANTIC_TYPES = "tributary.semantic_types"
GROUP_LOSSES = "tributary.losses"
GROUP_EMBEDDERS = "tributary.embedders"
HOOK_GROUPS = (GROUP_SEMANTIC_TYPES, GROUP_LOSSES)

ENV_DISABLE_AUTOLOAD = "TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD"
ENV_PLUGINS = "TRIBUTARY_PLUGINS"
BUILTIN_DISTRIBUTION = "tributary"

KIND_SEMANTIC_TYPE = "semantic type"
KIND_LOSS = "loss head"
KIND_EMBEDDER = "embedder"

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Source:
    """Where a plugin came from: its name and the distribution that installed it."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution is None:
            return f"plugin {self.plugin!r} (registered from Python)"
        return f"plugin {self.plugin!r} ({self.distribution} {self.version})"


@attrs.frozen(kw_only=True)
class Component:
    """One registered semantic type, loss head or embedder, as `plugins list` shows it."""

    name: str
    kind: str
    source: Source
    target: str  # "module:Class"
    description: str = ""


def _normalize(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-").replace(".", "-")


@attrs.frozen(kw_only=True)
class AutoloadPolicy:
    """Which distributions' entry points may load; built-ins always may."""

    disabled: bool = False
    only: frozenset[str] | None = None  # normalized distribution names, or None for all

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AutoloadPolicy:
        env = os.environ if env is None else env
        disabled = env.get(ENV_DISABLE_AUTOLOAD, "").strip().lower() not in ("", "0", "false", "no")
        only = None
        if ENV_PLUGINS in env:
            only = frozenset(_normalize(n.strip()) for n in env[ENV_PLUGINS].split(",") if n.strip())
        return cls(disabled=disabled, only=only)

    def refusal(self, distribution: str | None) -> str | None:
        """None if ``distribution``'s plugins may load, else the reason they may not."""
        if distribution is not None and _normalize(distribution) == BUILTIN_DISTRIBUTION:
            return None
        if self.disabled:
            return f"{ENV_DISABLE_AUTOLOAD} is set"
        if self.only is not None and (distribution is None or _normalize(distribution) not in self.only):
            return f"{ENV_PLUGINS} does not list it"
        return None


def _entry_points(group: str) -> list[importlib_metadata.EntryPoint]:
    # One entry point per (distribution, name): the same distribution can be visible twice on
    # sys.path (an editable install plus a build dir); that is not a clash between plugins.
    seen: dict[tuple[str | None, str], importlib_metadata.EntryPoint] = {}
    for ep in importlib_metadata.entry_points(group=group):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else None
        seen.setdefault((dist and _normalize(dist), ep.name), ep)
    return list(seen.values())


def _source_of(ep: importlib_metadata.EntryPoint) -> Source:
    if ep.dist is None:
        return Source(plugin=ep.name)
    return Source(plugin=ep.name, distribution=ep.dist.metadata["Name"], version=ep.dist.version)


def _target(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of a plugin's exception on one line (its message may span several)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _skip_hint(source: Source) -> str:
    """How to get past a broken third-party plugin without uninstalling it."""
    if source.distribution is None or _normalize(source.distribution) == BUILTIN_DISTRIBUTION:
        return ""
    return (f" (uninstall {source.distribution}, or leave it out with {ENV_PLUGINS} or "
            f"{ENV_DISABLE_AUTOLOAD}=1)")


class Registry:
    """Installed semantic types, loss heads and embedder backends.

    Args:
        plugins: extra plugin objects registered from Python, as ``(object, name)`` pairs,
            in addition to (or, with ``autoload=False``, instead of) entry points.
        autoload: load plugins from entry points at all (subject to the environment policy).
        env: environment to read the autoload policy from; ``os.environ`` by default.
        skip_broken: instead of raising :class:`PluginError` for a plugin that fails to load,
            whose hook raises or returns something wrong, or whose component clashes with
            one registered before it, leave it out and record why in :attr:`broken` (for
            ``tributary plugins list``, which should show everything else).
    """

    def __init__(
        self,
        *,
        plugins: Iterable[tuple[object, str]] = (),
        autoload: bool = True,
        env: Mapping[str, str] | None = None,
        skip_broken: bool = False,
    ) -> None:
        from tributary_core import hookspecs  # imports this module's markers: keep it lazy

        self.policy = AutoloadPolicy.from_env(env)
        self.autoload = autoload
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._sources: dict[str, Source] = {}  # pluggy plugin name -> source
        self._origins: dict[tuple[str, str], Source] = {}  # (kind, component name) -> source
        self.skipped: list[tuple[Source, str]] = []  # plugins the policy kept out, and why
        self.skip_broken = skip_broken
        self.broken: list[str] = []  # with skip_broken: what was left out, and why

        if autoload:
            for group in HOOK_GROUPS:
                for ep in _entry_points(group):
                    self._register_entry_point(group, ep)
        for obj, name in plugins:
            self._register(obj, name, Source(plugin=name))
        while True:
            try:
                self._pm.check_pending()
                break
            except pluggy.PluginValidationError as exc:
                name = self._pm.get_name(exc.plugin) or repr(exc.plugin)
                source = self._sources.get(name)
                self._broken(f"{source or name}: {' '.join(str(exc).split())}", source)
                self._pm.unregister(exc.plugin)

        self.semantic_types: dict[str, type[SemanticType]] = self._collect(
            "tributary_semantic_types", SemanticType, KIND_SEMANTIC_TYPE
        )
        self.loss_heads: dict[str, type[LossHead]] = self._collect(
            "tributary_loss_heads", LossHead, KIND_LOSS
        )

    # -- loading ---------------------------------------------------------------------------

    def _register_entry_point(self, group: str, ep: importlib_metadata.EntryPoint) -> None:
        source = _source_of(ep)
        reason = self.policy.refusal(source.distribution)
        if reason is not None:
            self.skipped.append((source, reason))
            return
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin's import may raise anything: report it, naming it
            self._broken(f"{source} in group {group!r} failed to load ({ep.value}): {_one_line(exc)}",
                         source, cause=exc)
            return
        if self._pm.is_registered(obj):  # one module serving several groups
            return
        self._register(obj, f"{group}:{ep.name}", source)

    def _register(self, obj: object, name: str, source: Source) -> None:
        try:
            self._pm.register(obj, name=name)
        except ValueError as exc:
            self._broken(f"{source}: {exc}", source)
            return
        self._sources[name] = source

    def _broken(self, message: str, source: Source | None, cause: BaseException | None = None) -> None:
        """A plugin that cannot be used: raise, or with ``skip_broken`` record it and go on."""
        message += _skip_hint(source) if source is not None else ""
        if not self.skip_broken:
            raise PluginError(message) from cause
        self.broken.append(message)

    def _collect(self, hook_name: str, base: type[T], kind: str) -> dict[str, type[T]]:
        found: dict[str, type[T]] = {}
        origin: dict[str, Source] = {}
        hook = getattr(self._pm.hook, hook_name)
        # get_hookimpls() lists plugins in registration order: built-ins come first, so the
        # first source in a clash message is the one that was there before.
        for impl in hook.get_hookimpls():
            source = self._sources[impl.plugin_name]
            try:
                contributed = impl.function()
            except Exception as exc:  # a plugin's hook may raise anything: report it, naming it
                self._broken(f"{source}: {hook_name}() raised {_one_line(exc)}", source, cause=exc)
                continue
            if not isinstance(contributed, (list, tuple)):
                self._broken(f"{source}: {hook_name}() must return a list of classes, got "
                             f"{_shown(contributed)}", source)
                continue
            for cls in contributed:
                if not (isinstance(cls, type) and issubclass(cls, base)):
                    self._broken(f"{source}: {hook_name}() returned {_shown(cls)}, not a subclass of "
                                 f"{base.__name__}", source)
                    continue
                name = getattr(cls, "name", None)
                if not isinstance(name, str) or not name:
                    self._broken(f"{source}: {_target(cls)} has no 'name' string", source)
                    continue
                if name in found:
                    self._broken(
                        f"{kind} {name!r} is registered twice: by {origin[name]} "
                        f"({_target(found[name])}) and by {source} ({_target(cls)})", source)
                    continue
                found[name] = cls
                origin[name] = source
        self._origins.update({(kind, n): s for n, s in origin.items()})
        return found

    # -- semantic types and loss heads -----------------------------------------------------

    def semantic_type(self, name: str) -> SemanticType:
        """An instance of the semantic type ``name``; unknown names list the registered ones."""
        try:
            return self.semantic_types[name]()
        except KeyError:
            raise PluginError(
                f"unknown semantic type {name!r}; registered: {', '.join(sorted(self.semantic_types))}"
            ) from None

    def loss_head(self, name: str) -> LossHead:
        try:
            return self.loss_heads[name]()
        except KeyError:
            raise PluginError(
                f"unknown loss head {name!r}; registered: {', '.join(sorted(self.loss_heads)) or 'none'}"
            ) from None

    # -- embedders (pick one, via stevedore) -----------------------------------------------

    def _embedder_entry_points(self) -> tuple[dict[str, list[importlib_metadata.EntryPoint]], dict[str, str]]:
        allowed: dict[str, list[importlib_metadata.EntryPoint]] = {}
        refused: dict[str, str] = {}
        if not self.autoload:
            return allowed, refused
        for ep in _entry_points(GROUP_EMBEDDERS):
            reason = self.policy.refusal(_source_of(ep).distribution)
            if reason is None:
                allowed.setdefault(ep.name, []).append(ep)
            else:
                refused[ep.name] = f"{_source_of(ep)} is not loaded: {reason}"
        return allowed, refused

    def embedder_names(self) -> list[str]:
        """Names of the embedder backends that may be loaded."""
        return sorted(self._embedder_entry_points()[0])

    def embedder_class(self, name: str) -> type[Embedder]:
        """The backend class registered as ``name``, importing only that backend."""
        from stevedore import DriverManager, ExtensionManager
        from stevedore.exception import MultipleMatches, NoMatches

        allowed, refused = self._embedder_entry_points()
        if name not in allowed:
            if name in refused:
                raise PluginError(f"embedder {name!r}: {refused[name]}")
            raise PluginError(
                f"unknown embedder {name!r}; installed: {', '.join(sorted(allowed)) or 'none'}"
            )
        if len(allowed[name]) > 1:
            sources = " and by ".join(sorted(
                (str(_source_of(ep)) for ep in allowed[name]),
                key=lambda text: f"({BUILTIN_DISTRIBUTION} " not in text))
            raise PluginError(f"embedder {name!r} is registered twice: by {sources}")
        source = _source_of(allowed[name][0])
        # stevedore memoizes each namespace's entry points for the life of the process; forget
        # them so a plugin installed since (or a narrowed sys.path) is seen as pip left it.
        ExtensionManager.ENTRY_POINT_CACHE.pop(GROUP_EMBEDDERS, None)
        try:
            manager = DriverManager(namespace=GROUP_EMBEDDERS, name=name, invoke_on_load=False,
                                    on_load_failure_callback=_raise_load_failure)
        except (NoMatches, MultipleMatches) as exc:  # refused duplicates share the name
            raise PluginError(f"embedder {name!r}: {exc}") from None
        except _LoadFailure as exc:
            raise PluginError(f"{source} (embedder {name!r}) failed to load "
                              f"({allowed[name][0].value}): {exc}{_skip_hint(source)}") from None
        cls = manager.driver
        if not (isinstance(cls, type) and issubclass(cls, Embedder)):
            raise PluginError(f"{source}: embedder {name!r} is {_shown(cls)}, not an Embedder subclass")
        return cls

    def create_embedder(self, name: str, **kwargs: Any) -> Embedder:
        """Instantiate the embedder backend ``name`` with ``kwargs`` (model, dimension, ...)."""
        return self.embedder_class(name)(**kwargs)

    # -- listing ---------------------------------------------------------------------------

    def components(self) -> list[Component]:
        """Every registered component, for ``tributary plugins list``.

        Embedder backends are listed from their entry points without importing them.
        """
        out = []
        for kind, table in ((KIND_SEMANTIC_TYPE, self.semantic_types), (KIND_LOSS, self.loss_heads)):
            for name, cls in table.items():
                out.append(Component(name=name, kind=kind, source=self._origins[(kind, name)],
                                     target=_target(cls), description=cls.description))
        for name, eps in self._embedder_entry_points()[0].items():
            for ep in eps:
                out.append(Component(name=name, kind=KIND_EMBEDDER, source=_source_of(ep),
                                     target=ep.value))
        return out


def _shown(obj: object, limit: int = 120) -> str:
    """``repr(obj)`` on one line, cut to about ``limit`` characters."""
    text = " ".join(repr(obj).split())
    return text if len(text) <= limit else text[:limit] + "..."


class _LoadFailure(Exception):
    pass


def _raise_load_failure(manager: Any, entrypoint: Any, exc: BaseException) -> None:
    raise _LoadFailure(_one_line(exc)) from exc


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The process-wide registry of installed plugins, loaded on first use."""
    return Registry()


def reset_registry() -> None:
    """Forget the process-wide registry (after installing plugins, or in tests)."""
    get_registry.cache_clear()
