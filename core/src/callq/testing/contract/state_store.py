"""Contract mixin: the shared state store (claimed by ``shared_state``)."""

from __future__ import annotations

import threading
import time

from ...broker import Capabilities, Connection
from .base import ContractBase, fresh_queue_name


class AbstractStateStoreTests(ContractBase):
    """The shared state store (claimed by ``shared_state``)."""

    def test_state_store_put_get_only_new_delete(self, connection: Connection, caps: Capabilities) -> None:
        self.require(caps, "shared_state")
        st = connection.state
        key = fresh_queue_name("cq-state")
        try:
            assert st.get(key) is None
            assert st.put(key, "v1", only_new=True) is True
            assert st.put(key, "v2", only_new=True) is False
            assert st.get(key) == "v1"
            assert st.put(key, "v3") is True
            assert st.get(key) == "v3"
            assert st.delete(key) is True
            assert st.delete(key) is False
            assert st.get(key) is None
        finally:
            st.delete(key)

    def test_state_store_ttl_expires(self, connection: Connection, caps: Capabilities) -> None:
        self.require(caps, "shared_state")
        st = connection.state
        key = fresh_queue_name("cq-state")
        assert st.put(key, "x", ttl=1.0, only_new=True)
        assert st.get(key) == "x"
        time.sleep(1.6)
        assert st.get(key) is None
        assert st.put(key, "y", ttl=30, only_new=True), "an expired key counts as absent"
        st.delete(key)

    def test_state_store_incr_and_scan(self, connection: Connection, caps: Capabilities) -> None:
        self.require(caps, "shared_state")
        st = connection.state
        prefix = fresh_queue_name("cq-state") + ":"
        try:
            assert st.incr(prefix + "n") == 1
            assert st.incr(prefix + "n", 5) == 6
            st.put(prefix + "a", "1")
            st.put(prefix + "b", "2", ttl=60)
            st.put(prefix[:-1] + "-other", "no")
            assert st.scan(prefix) == {prefix + "n": "6", prefix + "a": "1", prefix + "b": "2"}
        finally:
            for key in (prefix + "n", prefix + "a", prefix + "b", prefix[:-1] + "-other"):
                st.delete(key)

    def test_state_store_only_new_is_atomic(self, broker_url: str, caps: Capabilities) -> None:
        self.require(caps, "shared_state")
        key = fresh_queue_name("cq-state")
        wins: list[bool] = []
        conns = [self.open(broker_url) for _ in range(4)]
        try:
            barrier = threading.Barrier(len(conns))

            def race(c: Connection) -> None:
                barrier.wait()
                wins.append(c.state.put(key, "me", ttl=30, only_new=True))

            threads = [threading.Thread(target=race, args=(c,)) for c in conns]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(wins) == [False, False, False, True]
        finally:
            conns[0].state.delete(key)
            for c in conns:
                c.close()

