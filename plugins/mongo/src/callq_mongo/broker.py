"""``mongodb://host:27017/db?lease=15``: one document per message in one collection.

Documents of ``<prefix>_messages`` (every queue in one collection, ``q`` first in each index):

    {_id, q: queue, b: body, p: priority, v: visible-at (epoch seconds),
     o: owner consumer or null, t: claim token or null, n: deliveries}

* waiting: ``o`` null, ``v`` = publish time + delay (the not-before time);
* claimed: ``o``/``t`` set, ``v`` = lease end. A claim takes documents with ``v <= now``, so a
  message whose lease ran out is claimable again without anyone moving it.

fetch claims a batch in three round trips (ids by index order, ``update_many`` guarded by
``v <= now`` so two racing consumers never both win a document, then read back by claim
token); ack deletes, requeue clears the owner. Heartbeats push the lease end of this
consumer's claims forward and clear the owner of expired claims (returning that count).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import pymongo
from bson import Binary
from pymongo.errors import BulkWriteError, ConfigurationError, ConnectionFailure, PyMongoError

from callq.broker import BrokerBase, Capabilities, Delivery
from callq.errors import BrokerError, ConfigError
from callq.url import BrokerURL

from .state import MongoState

log = logging.getLogger("callq.mongo")

T = TypeVar("T")

KNOWN_PARAMS = ("lease", "prefix", "poll", "retry")
#: documents per insert_many
CHUNK = 1000
#: index order of a claim: higher priority first, then oldest visible-at
CLAIM_SORT = [("p", pymongo.DESCENDING), ("v", pymongo.ASCENDING)]
CLAIM_INDEX = "callq_claim"
OWNER_INDEX = "callq_owner"
#: pymongo options callq sets unless the URL gives them
DEFAULT_OPTIONS: dict[str, Any] = {"serverSelectionTimeoutMS": 5000, "connectTimeoutMS": 5000,
                                   "appname": "callq"}
_TRANSIENT = (ConnectionFailure,)  # AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError


def mongo_client_uri(url: BrokerURL) -> tuple[str, str]:
    """The URI for pymongo (callq's own parameters removed) and the database name."""
    if url.scheme not in ("mongodb", "mongodb+srv"):
        raise ConfigError(f"broker URL {url}: scheme must be mongodb:// or mongodb+srv://")
    parts = urlsplit(url.raw)
    rest = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in KNOWN_PARAMS]
    database = url.path.strip("/") or "callq"
    if "/" in database or any(c in database for c in ' ."$\\'):
        raise ConfigError(f"broker URL {url}: {database!r} is not a valid database name")
    uri = parts._replace(path="/", query=urlencode(rest)).geturl()
    if url.scheme == "mongodb":  # mongodb+srv needs DNS to parse: pymongo checks it when connecting
        try:
            pymongo.uri_parser.parse_uri(uri)
        except (ConfigurationError, ValueError) as exc:
            raise ConfigError(f"broker URL {url}: {exc}") from None
    return uri, database


class MongoBroker(BrokerBase):
    """Queues as documents in MongoDB; see the module docstring and docs/brokers/mongo.md."""

    def __init__(self, url: BrokerURL) -> None:
        super().__init__(url)
        uri, database = mongo_client_uri(url)
        self.lease = url.float_param("lease", 15.0, minimum=1.0)
        self.heartbeat_interval = self.lease / 5  # type: ignore[misc]  # per instance
        self.poll = url.float_param("poll", 0.2, minimum=0.005)
        self.retry_for = url.float_param("retry", 30.0)
        self.prefix = url.str_param("prefix", "callq")
        if not self.prefix or any(c in self.prefix for c in ' ."$\\/'):
            raise ConfigError(f"broker URL {url}: prefix {self.prefix!r} must be a plain collection name part")
        self.capabilities = Capabilities(
            acks=True,
            persistent=False,  # the server's durability (journal, write concern) decides: not claimed
            distributed=True,
            backlog=True,
            native_delay=True,
            priority=True,
            exact_size=True,
            shared_state=True,
            redelivery_timeout=self.lease,
        )
        # defaults for what the URL leaves unset (pymongo's keyword arguments would override it)
        given = {k.lower() for k, _ in parse_qsl(urlsplit(uri).query)}
        defaults = {k: v for k, v in DEFAULT_OPTIONS.items() if k.lower() not in given}
        try:
            self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(uri, **defaults)
        except (ConfigurationError, ValueError) as exc:
            raise ConfigError(f"broker URL {url}: {exc}") from None
        self.db = self.client[database]
        self.col = self.db[f"{self.prefix}_messages"]
        self.consumer_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}  # claim token -> deliveries not yet settled
        self._indexed = False
        self._claimed = False  # claimed at least once: close() gives claims back
        self._closed = False
        self._state: MongoState | None = None

    # --- helpers -------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one operation; retry with backoff while the server is unreachable."""
        deadline = time.monotonic() + self.retry_for
        wait = 0.05
        failures = 0
        while True:
            try:
                return fn()
            except _TRANSIENT as exc:
                failures += 1
                if self._closed or time.monotonic() + wait > deadline:
                    raise BrokerError(f"mongodb {self.url}: {what} failed: {type(exc).__name__}: {exc}") from exc
                log.warning("mongodb %s: %s failed (%s: %s); retrying in %.2fs",
                            self.url, what, type(exc).__name__, exc, wait)
                time.sleep(wait)
                wait = min(wait * 2, 2.0)
            except PyMongoError as exc:
                raise BrokerError(f"mongodb {self.url}: {what} failed: {type(exc).__name__}: {exc}") from exc

    def _ensure_indexes(self) -> None:
        if self._indexed:
            return
        self.call("create indexes", lambda: self.col.create_indexes([
            pymongo.IndexModel([("q", 1), ("p", -1), ("v", 1)], name=CLAIM_INDEX),
            pymongo.IndexModel([("o", 1), ("q", 1)], name=OWNER_INDEX),
        ]))
        self._indexed = True

    # --- publish -------------------------------------------------------------------------

    def callq_publish(self, queue: str, bodies: Sequence[bytes], delay: float, priority: int | None) -> int:
        if not bodies:
            return 0
        self._ensure_indexes()
        pri = int(priority or 0)
        base = time.time() + max(0.0, delay)
        for start in range(0, len(bodies), CHUNK):
            # _ids are made here, so a resend after a lost reply cannot store a message twice
            docs = [{"q": queue, "b": Binary(body), "p": pri, "v": base + (start + i) * 1e-6,
                     "o": None, "t": None, "n": 0}
                    for i, body in enumerate(bodies[start:start + CHUNK])]
            self.call("publish", lambda d=docs: self._insert(d))
        return len(bodies)

    def _insert(self, docs: list[dict[str, Any]]) -> None:
        try:
            self.col.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != 11000 for e in errors) or exc.details.get("writeConcernErrors"):
                raise
            # duplicate keys only: an earlier attempt stored these already

    # --- fetch ---------------------------------------------------------------------------

    def callq_fetch(self, queue: str, max_n: int, timeout: float) -> list[Delivery]:
        if max_n <= 0:
            return []
        self._ensure_indexes()
        deadline = time.monotonic() + timeout
        wait = 0.01
        while True:
            out = self.call("fetch", lambda: self._claim(queue, max_n))
            if out or self._closed:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(wait, remaining))
            wait = min(wait * 2, self.poll)

    def claim_cursor(self, queue: str, now: float, max_n: int) -> pymongo.cursor.Cursor[dict[str, Any]]:
        """The ids of up to ``max_n`` claimable messages, in claim order, along the claim index."""
        return (self.col.find({"q": queue, "v": {"$lte": now}}, {"_id": 1})
                .sort(CLAIM_SORT).limit(max_n).hint(CLAIM_INDEX))

    def _claim(self, queue: str, max_n: int) -> list[Delivery]:
        now = time.time()
        ids = [d["_id"] for d in self.claim_cursor(queue, now, max_n)]
        if not ids:
            return []
        token = uuid.uuid4().hex
        self._claimed = True  # before the update: its reply may be lost after it took effect
        res = self.col.update_many(
            {"_id": {"$in": ids}, "v": {"$lte": now}},
            {"$set": {"o": self.consumer_id, "t": token, "v": now + self.lease}, "$inc": {"n": 1}},
        )
        if not res.modified_count:
            return []
        with self._lock:
            self._held[token] = res.modified_count
        docs = list(self.col.find({"_id": {"$in": ids}, "t": token}, {"b": 1, "n": 1, "p": 1, "v": 1}))
        if len(docs) != res.modified_count:  # cannot happen unless someone edits the documents
            with self._lock:
                self._held[token] = len(docs)
        docs.sort(key=lambda d: (-d.get("p", 0), d["_id"]))
        return [Delivery(bytes(d["b"]), queue, (d["_id"], token), d.get("n", 1) > 1) for d in docs]

    # --- ack / requeue -------------------------------------------------------------------

    def _settle(self, deliveries: Sequence[Delivery]) -> tuple[list[Any], list[str]]:
        ids = [d.tag[0] for d in deliveries]
        tokens = sorted({d.tag[1] for d in deliveries})
        with self._lock:
            for d in deliveries:
                left = self._held.get(d.tag[1], 0) - 1
                if left > 0:
                    self._held[d.tag[1]] = left
                else:
                    self._held.pop(d.tag[1], None)
        return ids, tokens

    def callq_ack(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        ids, tokens = self._settle(deliveries)
        # the token guard: a message whose lease ran out and that another consumer claimed
        # since is not deleted by this late ack (it runs again there: at-least-once)
        self.call("ack", lambda: self.col.delete_many({"_id": {"$in": ids}, "t": {"$in": tokens}}))
        return len(deliveries)

    def callq_requeue(self, deliveries: Sequence[Delivery], delay: float) -> int:
        if not deliveries:
            return 0
        ids, tokens = self._settle(deliveries)
        visible = time.time() + max(0.0, delay)
        self.call("requeue", lambda: self.col.update_many(
            {"_id": {"$in": ids}, "t": {"$in": tokens}}, {"$set": {"o": None, "t": None, "v": visible}}))
        return len(deliveries)

    # --- heartbeat / size / purge / close ------------------------------------------------

    def callq_heartbeat(self) -> int:
        """Extend this consumer's leases; clear the owner of expired claims and count them."""
        self._ensure_indexes()
        now = time.time()
        with self._lock:
            tokens = list(self._held)
        if tokens and not self._closed:
            self.call("heartbeat", lambda: self.col.update_many(
                {"o": self.consumer_id, "t": {"$in": tokens}}, {"$set": {"v": now + self.lease}},
                hint=OWNER_INDEX))
        res = self.call("heartbeat", lambda: self.col.update_many(
            {"o": {"$gt": ""}, "v": {"$lte": now}}, {"$set": {"o": None, "t": None}}, hint=OWNER_INDEX))
        if res.modified_count:
            log.warning("mongodb %s: %d message(s) of dead consumers are back", self.url, res.modified_count)
        return int(res.modified_count)

    def callq_size(self, queue: str) -> int:
        """Waiting messages (delayed ones included); claims under a live lease are excluded."""
        self._ensure_indexes()
        now = time.time()
        total = self.call("size", lambda: self.col.count_documents({"q": queue}, hint=CLAIM_INDEX))
        held = self.call("size", lambda: self.col.count_documents(
            {"o": {"$gt": ""}, "q": queue, "v": {"$gt": now}}, hint=OWNER_INDEX))
        return max(0, total - held)

    def callq_purge(self, queue: str) -> int:
        self._ensure_indexes()
        now = time.time()
        res = self.call("purge", lambda: self.col.delete_many(
            {"q": queue, "$or": [{"o": None}, {"v": {"$lte": now}}]}))
        return int(res.deleted_count)

    def callq_state_store(self) -> MongoState:
        if self._state is None:
            self._state = MongoState(self.db[f"{self.prefix}_state"], self.call)
        return self._state

    def callq_close(self) -> bool:
        if self._closed:
            return True
        self._closed = True
        if not self._claimed:
            self.client.close()
            return True
        try:
            self.retry_for = min(self.retry_for, 5.0)
            res = self.call("close", lambda: self.col.update_many(
                {"o": self.consumer_id}, {"$set": {"o": None, "t": None, "v": time.time()}}, hint=OWNER_INDEX))
            if res.modified_count:
                log.info("mongodb %s: gave back %d unacked message(s) on close", self.url, res.modified_count)
        except BrokerError as exc:
            log.warning("mongodb %s: could not give back unacked messages on close (%s); "
                        "they come back when their lease ends (%.0fs)", self.url, exc, self.lease)
        finally:
            self.client.close()
        return True

    def __repr__(self) -> str:
        return f"MongoBroker({str(self.url)!r}, consumer={self.consumer_id!r})"
