"""One ``pulsar.Client`` per process and server, shared by every connection (reference counted),
closed and joined at exit."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Any

import pulsar

#: the C++ client's own log lines go through this stdlib logger with ``client_log=python``
client_log = logging.getLogger("callq.pulsar.client")

# One pulsar.Client per process and server, shared by every connection (reference counted).
# The Pulsar docs recommend one client per process; it also keeps consumer ids (numbered per
# client) distinct across the connections of a process, which pulsar-lite 0.2 needs (it
# refuses a second consumer with the same id on a subscription, even from another client).
_clients: dict[tuple[int, str, int, str], tuple[pulsar.Client, int]] = {}
_clients_lock = threading.Lock()


ClientKey = tuple[int, str, int, str]  # pid, service URL, operation timeout, client_log


def acquire_client(key: ClientKey) -> pulsar.Client:
    with _clients_lock:
        client, users = _clients.get(key, (None, 0))
        if client is None:
            _, service_url, timeout, log_to = key
            logger = client_log if log_to == "python" else pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
            client = pulsar.Client(service_url, operation_timeout_seconds=timeout,
                                   connection_timeout_ms=min(timeout, 10) * 1000, logger=logger)
        _clients[key] = (client, users + 1)
        return client


def release_client(key: ClientKey) -> None:
    with _clients_lock:
        client, users = _clients.get(key, (None, 0))
        if client is None:
            return
        if users > 1:
            _clients[key] = (client, users - 1)
            return
        del _clients[key]
    _close_client(client)


def _close_client(client: pulsar.Client) -> None:
    client.close()
    try:
        # joins the C++ threads now: left to interpreter shutdown, a thread that still logs
        # through the Python logger aborts the process ("terminate called ...")
        client._client.shutdown()
    except Exception:  # noqa: BLE001 - not in every pulsar-client version
        pass


#: open brokers (anything with ``callq_close``), closed at exit before their clients
live_brokers: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_all_clients() -> None:
    """Close what is left open at exit (consumers, producers, then clients): pulsar-client
    objects destroyed during interpreter shutdown can abort the process."""
    for broker in list(live_brokers):
        try:
            broker.callq_close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    with _clients_lock:
        clients = [client for (pid, *_), (client, _) in _clients.items() if pid == os.getpid()]
        _clients.clear()
    for client in clients:
        try:
            _close_client(client)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _after_fork_in_child() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()  # the parent's clients (and their threads) are not ours


os.register_at_fork(after_in_child=_after_fork_in_child)
