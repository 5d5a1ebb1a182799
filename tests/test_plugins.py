"""Extension hooks: a throwaway plugin registered and unregistered, as plugin authors would."""

import ast
import pathlib

import pytest

import callq
from callq import hookimpl, hookspecs
from callq.plugins import connection_plugin_manager, get_plugin_manager

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def callq_before_publish(self, queue, messages):
        for m in messages:
            m["_callq"]["trace"] = "t-1"
        self.events.append(("publish", queue, len(messages)))

    @hookimpl
    def callq_before_call(self, call):
        self.events.append(("before", call.kwargs["x"], call.meta.get("trace")))

    @hookimpl
    def callq_after_call(self, call):
        self.events.append(("after", call.kwargs["x"], call.outcome, call.result))

    @hookimpl
    def callq_consumer_started(self, consumer):
        self.events.append(("started", consumer.queue))

    @hookimpl
    def callq_consumer_stopped(self, consumer):
        self.events.append(("stopped", consumer.queue))

    @hookimpl
    def callq_heartbeat_seen(self, consumer, recovered):
        self.events.append(("heartbeat", recovered))


class PublishCounter:
    """Wraps a broker hook without touching the broker."""

    def __init__(self):
        self.bodies = 0

    @hookimpl(wrapper=True)
    def callq_publish(self, queue, bodies, delay, priority):
        result = yield
        self.bodies += len(bodies)
        return result


@pytest.fixture
def recorder():
    plugin = Recorder()
    callq.register(plugin, name="test-recorder")
    yield plugin
    callq.unregister(plugin)


def test_lifecycle_hooks_fire(recorder, mem_url):
    @callq.task("hooks", broker=mem_url + "-hooks", stop_when_idle=0.3)
    def double(x):
        return x * 2

    double.push(21)
    double.consume()
    assert double._consumer.join(10)
    names = [e[0] for e in recorder.events]
    assert names[0] == "publish" and recorder.events[0] == ("publish", "hooks", 1)
    assert ("before", 21, "t-1") in recorder.events
    assert ("after", 21, "done", 42) in recorder.events
    assert names.index("started") < names.index("before") < names.index("after") < names.index("stopped")


def test_wrapper_plugin_sees_broker_calls(mem_url):
    counter = PublishCounter()
    callq.register(counter, name="test-counter")
    try:
        conn = callq.Connection(mem_url)
        conn.publish("w", [b"{}"] * 5)
        conn.publish("w", [b"{}"])
        assert counter.bodies == 6
        conn.close()
    finally:
        callq.unregister(counter)


def test_disable_plugins_blocks_by_name(monkeypatch):
    import callq.plugins as plugins

    monkeypatch.setattr(plugins, "_pm", None)
    monkeypatch.setenv("CALLQ_DISABLE_PLUGINS", "callq.default.entrypoint-brokers")
    try:
        pm = get_plugin_manager()
        assert pm.is_blocked("callq.default.entrypoint-brokers")
        with pytest.raises(callq.ConfigError, match="no plugin opened broker URL"):
            callq.Connection("memory://blocked")
    finally:
        monkeypatch.setattr(plugins, "_pm", None)


def test_undecorated_broker_methods_are_hook_implementations():
    class Tiny(callq.BrokerBase):
        def callq_size(self, queue):
            return 42

    pm = connection_plugin_manager(Tiny(None))
    assert pm.hook.callq_size(queue="x") == 42


def _hook_names():
    return sorted(n for n in dir(hookspecs) if n.startswith("callq_") and callable(getattr(hookspecs, n)))


def test_every_hook_is_documented():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    missing = [n for n in _hook_names() if f"`{n}`" not in doc]
    assert not missing, f"hooks missing from docs/plugins.md: {missing}"


def test_every_hook_is_exercised_by_a_test():
    source = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    source += "\n".join(p.read_text() for p in (ROOT / "core/src/callq/testing/contract").glob("*.py"))
    tree_names = {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)}
    tree_names |= {node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
    broker_methods = {"callq_" + n for n in ("publish", "fetch", "ack", "requeue", "heartbeat", "purge",
                                             "size", "close", "capabilities", "state_store")}
    untested = [n for n in _hook_names()
                if n not in tree_names and n not in broker_methods and n != "callq_open_broker"]
    assert not untested, f"hooks without a test: {untested}"


class SchemePlugin:
    """An extension that opens its own scheme through callq_open_broker."""

    @hookimpl
    def callq_open_broker(self, url):
        if url.scheme == "echo":
            from callq.brokers.memory import MemoryBroker
            from callq.url import BrokerURL

            return MemoryBroker(BrokerURL.parse("memory://echo"))
        return None


def test_open_broker_hook_claims_a_scheme():
    plugin = SchemePlugin()
    callq.register(plugin, name="test-echo")
    try:
        conn = callq.Connection("echo://anything")
        conn.publish("e", [b"{}"])
        assert conn.size("e") == 1
        conn.purge("e")
        conn.close()
    finally:
        callq.unregister(plugin)
