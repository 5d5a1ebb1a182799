"""The plugin host: a typed wrapper around pluggy's PluginManager.

Extension plugins come from the entry-point group ``callq``; brokers from ``callq.brokers``
(entry name = URL scheme, value = the broker class), loaded only when a URL needs one.
``CALLQ_DISABLE_PLUGINS`` (comma-separated names) blocks plugins; ``CALLQ_TRACE_PLUGINS=1``
logs every hook call.
"""

from __future__ import annotations

import difflib
import logging
import os
import threading
import weakref
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import BrokerNotFound, ConfigError
from .hookspecs import hookimpl
from .url import BrokerURL

log = logging.getLogger("callq.plugins")

BROKER_GROUP = "callq.brokers"
PLUGIN_GROUP = "callq"

# Schemes of the brokers this project ships, and the distribution to install for each.
KNOWN_DISTRIBUTIONS = {
    "memory": "callq",
    "sqlite": "callq",
    "redis": "callq-redis",
    "rediss": "callq-redis",
    "redis+stream": "callq-redis-stream",
    "amqp": "callq-rabbitmq",
    "amqps": "callq-rabbitmq",
    "kafka": "callq-kafka",
    "mqtt": "callq-mqtt",
    "pulsar": "callq-pulsar",
    "kombu": "callq-kombu",
    "postgresql": "callq-sql",
    "mysql": "callq-sql",
    "sql": "callq-sql",
    "nats": "callq-nats",
    "mongodb": "callq-mongo",
    "zmq": "callq-zeromq",
}


class CallqPluginManager(pluggy.PluginManager):
    """PluginManager that also accepts undecorated ``callq_*`` methods as hook implementations.

    Broker classes thus need no decorators; extension plugins may still use ``@hookimpl``
    for options such as ``wrapper=True``.
    """

    def __init__(self) -> None:
        super().__init__("callq")
        self.add_hookspecs(hookspecs)

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("callq_") and callable(getattr(plugin, name, None)):
            return {}
        return opts

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """Register ``plugin``; a ``callq_*`` method that names no hook is an error, not ignored."""
        unknown = [attr for attr in dir(plugin) if attr.startswith("callq_") and not attr.startswith("callq__")
                   and callable(getattr(plugin, attr, None)) and attr not in _HOOK_NAMES]
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(_HOOK_NAMES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"plugin {name or plugin!r}: {unknown[0]!r} is not a callq hook{hint}; "
                              "see callq.hookspecs for the hook names")
        return super().register(plugin, name=name)


_HOOK_NAMES = frozenset(n for n in dir(hookspecs) if n.startswith("callq_"))


class EntryPointBrokers:
    """Default plugin: opens a broker through the ``callq.brokers`` entry points."""

    @hookimpl(trylast=True)
    def callq_open_broker(self, url: BrokerURL) -> Any:
        cls = load_broker_class(url.scheme)
        return cls(url)


def installed_schemes() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=BROKER_GROUP)})


def load_broker_class(scheme: str) -> type:
    """The broker class for ``scheme`` (``kombu+redis`` falls back to ``kombu``)."""
    eps = {ep.name: ep for ep in entry_points(group=BROKER_GROUP)}
    for name in (scheme, scheme.split("+", 1)[0]):
        if name in eps:
            return eps[name].load()
    hint = KNOWN_DISTRIBUTIONS.get(scheme) or KNOWN_DISTRIBUTIONS.get(scheme.split("+", 1)[0])
    install = f"; install it with: pip install {hint}" if hint else ""
    raise BrokerNotFound(
        f"no broker installed for URL scheme {scheme!r}{install}. "
        f"Installed schemes: {', '.join(installed_schemes()) or 'none'}"
    )


_pm: CallqPluginManager | None = None
_pm_lock = threading.Lock()


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get("CALLQ_DISABLE_PLUGINS", "").split(",") if n.strip()}


def _configure_tracing(pm: CallqPluginManager) -> None:
    if os.environ.get("CALLQ_TRACE_PLUGINS", "").lower() in ("1", "true", "yes", "on"):
        pm.trace.root.setwriter(lambda msg: log.debug("%s", msg.rstrip()))
        pm.enable_tracing()


def get_plugin_manager() -> CallqPluginManager:
    """The process-wide manager holding extension plugins (created on first call, not at import)."""
    global _pm
    if _pm is None:
        with _pm_lock:
            if _pm is None:
                pm = CallqPluginManager()
                for name in _disabled():
                    pm.set_blocked(name)
                pm.register(EntryPointBrokers(), name="callq.default.entrypoint-brokers")
                from .defaults import DEFAULT_PLUGINS

                for plugin_name, plugin_cls in DEFAULT_PLUGINS.items():
                    if not pm.is_blocked(plugin_name):
                        pm.register(plugin_cls(), name=plugin_name)
                pm.load_setuptools_entrypoints(PLUGIN_GROUP)
                _configure_tracing(pm)
                _pm = pm
    return _pm


_connection_pms: weakref.WeakSet[CallqPluginManager] = weakref.WeakSet()
_generation = 0


def generation() -> int:
    """Changes whenever a plugin is registered or unregistered (consumers re-read their hooks)."""
    return _generation


def connection_plugin_manager(broker: Any) -> CallqPluginManager:
    """A manager for one connection: the broker instance plus every registered extension plugin.

    Plugins registered later with :func:`register` are added to it too.
    """
    root = get_plugin_manager()
    pm = CallqPluginManager()
    with _pm_lock:
        for name, plugin in root.list_name_plugin():
            if plugin is not None:
                pm.register(plugin, name=name)
        _connection_pms.add(pm)
    pm.register(broker, name=f"broker:{type(broker).__module__}.{type(broker).__qualname__}")
    _configure_tracing(pm)
    return pm


def register(plugin: Any, name: str | None = None) -> str | None:
    """Register an extension plugin in this process: it applies to every connection, open or not."""
    global _generation
    root = get_plugin_manager()
    with _pm_lock:
        registered = root.register(plugin, name=name)
        if registered is not None:
            for pm in list(_connection_pms):
                pm.register(plugin, name=registered)
        _generation += 1
    return registered


def unregister(plugin: Any) -> None:
    global _generation
    with _pm_lock:
        get_plugin_manager().unregister(plugin)
        for pm in list(_connection_pms):
            if pm.is_registered(plugin):
                pm.unregister(plugin)
        _generation += 1
