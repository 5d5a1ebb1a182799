"""The plugin host: a typed wrapper around pluggy's PluginManager.

Extension plugins come from the entry-point group ``callq``; brokers from ``callq.brokers``
(entry name = URL scheme, value = the broker class), loaded only when a URL needs one.
``CALLQ_DISABLE_PLUGINS`` (comma-separated names) blocks plugins; ``CALLQ_TRACE_PLUGINS=1``
logs every hook call.
"""

from __future__ import annotations

import logging
import os
import threading
from importlib.metadata import entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import BrokerNotFound
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
    "nsq": "callq-nsq",
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
                pm.load_setuptools_entrypoints(PLUGIN_GROUP)
                _configure_tracing(pm)
                _pm = pm
    return _pm


def connection_plugin_manager(broker: Any) -> CallqPluginManager:
    """A manager for one connection: the broker instance plus every registered extension plugin."""
    root = get_plugin_manager()
    pm = CallqPluginManager()
    for name, plugin in root.list_name_plugin():
        if plugin is not None:
            pm.register(plugin, name=name)
    pm.register(broker, name=f"broker:{type(broker).__module__}.{type(broker).__qualname__}")
    _configure_tracing(pm)
    return pm


def register(plugin: Any, name: str | None = None) -> str | None:
    """Register an extension plugin in this process (affects connections opened afterwards)."""
    return get_plugin_manager().register(plugin, name=name)


def unregister(plugin: Any) -> None:
    get_plugin_manager().unregister(plugin)
