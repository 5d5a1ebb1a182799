"""The shared key-value store (``callq.state.StateStore``) in a MongoDB collection.

One document per key: ``{_id: key, s: string value | n: counter, e: expiry (UTC date) or null}``.
A TTL index on ``e`` lets the server delete expired keys (mongod sweeps every 60 s), and
every read filters on ``e`` as well, so a key is gone the moment it expires, sweeper or not.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Callable
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

Call = Callable[[str, Callable[[], Any]], Any]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _expiry(ttl: float | None) -> dt.datetime | None:
    return None if ttl is None else _now() + dt.timedelta(seconds=ttl)


def _live(now: dt.datetime) -> dict[str, Any]:
    return {"$or": [{"e": None}, {"e": {"$gt": now}}]}


def _value(doc: dict[str, Any]) -> str:
    return str(doc["n"]) if "n" in doc else str(doc.get("s"))


class MongoState:
    def __init__(self, col: Collection[dict[str, Any]], call: Call) -> None:
        self.col = col
        self.call = call
        self._indexed = False
        self._lock = threading.Lock()

    def _ready(self) -> None:
        if not self._indexed:
            with self._lock:
                if not self._indexed:
                    self.call("state index", lambda: self.col.create_index(
                        "e", name="callq_ttl", expireAfterSeconds=0))
                    self._indexed = True

    def put(self, key: str, value: str, ttl: float | None = None, only_new: bool = False) -> bool:
        self._ready()
        doc = {"s": value, "e": _expiry(ttl)}
        if not only_new:
            self.call("state put", lambda: self.col.replace_one({"_id": key}, doc, upsert=True))
            return True
        now = _now()
        # matches only an expired document; an absent one is inserted; a live one makes the
        # upsert collide on _id (DuplicateKeyError): not stored
        expired = {"_id": key, "e": {"$ne": None, "$lte": now}}

        def store() -> bool:
            try:
                self.col.replace_one(expired, doc, upsert=True)
            except DuplicateKeyError:
                return False
            return True

        return bool(self.call("state put", store))

    def get(self, key: str) -> str | None:
        self._ready()
        doc = self.call("state get", lambda: self.col.find_one({"_id": key, **_live(_now())}))
        return None if doc is None else _value(doc)

    def delete(self, key: str) -> bool:
        self._ready()
        doc = self.call("state delete", lambda: self.col.find_one_and_delete({"_id": key}))
        if doc is None:
            return False
        return doc.get("e") is None or _aware(doc["e"]) > _now()

    def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        self._ready()
        while True:
            now = _now()
            doc = self.call("state incr", lambda n=now: self.col.find_one_and_update(
                {"_id": key, "n": {"$exists": True}, **_live(n)}, {"$inc": {"n": amount}},
                return_document=ReturnDocument.AFTER))
            if doc is not None:
                return int(doc["n"])
            current = self.call("state incr", lambda n=now: self.col.find_one({"_id": key, **_live(n)}))
            if current is None:  # absent or expired: create it
                if self.put(key, "0", ttl, only_new=True):
                    continue
            else:  # a string value from put(): turn it into a counter if nobody changed it
                start = int(current.get("s") or 0)
                self.call("state incr", lambda c=current, s=start: self.col.update_one(
                    {"_id": key, "s": c.get("s"), "e": c.get("e")},
                    {"$set": {"n": s}, "$unset": {"s": ""}}))

    def scan(self, prefix: str) -> dict[str, str]:
        self._ready()
        query = {"_id": {"$regex": "^" + re.escape(prefix)}, **_live(_now())}
        docs = self.call("state scan", lambda: list(self.col.find(query)))
        return {d["_id"]: _value(d) for d in docs}


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
