"""The wire format: a JSON object of keyword arguments plus the reserved ``"_callq"`` key.

``{"a": 3, "b": 6}`` written by any program is a valid message; metadata is optional.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping
from random import getrandbits as _getrandbits
from time import time as _time
from typing import Any

import orjson

META_KEY = "_callq"

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_loads = json.loads
_fast_loads = orjson.loads
_fast_dumps = orjson.dumps
#: value types orjson writes exactly as the stdlib does (floats too, when finite)
_PLAIN = frozenset((str, int, bool, type(None)))


class MalformedMessage(ValueError):
    """A body that is not a call: the message says why."""


def new_id() -> str:
    """A 128-bit hex id that sorts by time, as UUIDv7 does: 48 bits of milliseconds since the
    epoch, then 80 random bits (``random`` is reseeded after fork, so processes never share
    ids). Records keyed by id (results, history) then land at the end of a SQL store's index
    instead of on a random page each: a sqlite result write costs a third."""
    return f"{int(_time() * 1000):012x}{_getrandbits(80):020x}"


def new_meta(*, eta: float | None = None, expires_at: float | None = None, msg_id: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"id": msg_id or new_id(), "published_at": round(time.time(), 6), "attempt": 0}
    if eta is not None:
        meta["eta"] = eta
    if expires_at is not None:
        meta["expires_at"] = expires_at
    return meta


def encode(kwargs: Mapping[str, Any], meta: Mapping[str, Any], *, where: str = "call") -> bytes:
    """Encode a call. Non-JSON values raise TypeError naming the argument."""
    if META_KEY in kwargs:
        raise TypeError(f"{where}: argument name {META_KEY!r} is reserved by callq")
    payload = dict(kwargs)
    payload[META_KEY] = meta
    if _plain(kwargs.values()) and _plain(meta.values()):
        try:
            return _fast_dumps(payload)
        except TypeError:  # an int beyond 64 bits, a lone surrogate, a non-str key: the stdlib decides
            pass
    try:
        return _dumps(payload).encode()
    except (TypeError, ValueError) as exc:
        for name, value in kwargs.items():
            try:
                _dumps(value)
            except (TypeError, ValueError) as inner:
                raise TypeError(
                    f"{where}: argument {name!r} is not JSON-serialisable "
                    f"({type(value).__name__}: {inner}); callq sends JSON only"
                ) from None
        raise TypeError(f"{where}: metadata is not JSON-serialisable ({exc})") from None


def _plain(values: Iterable[Any]) -> bool:
    """Only str, int, bool, None and finite floats: orjson encodes these (~0.3 µs) as the stdlib
    would (~2.7 µs). Anything else takes the stdlib, which refuses NaN, datetimes, UUIDs,
    dataclasses and plain enums where orjson would write null or a string."""
    for v in values:
        t = type(v)
        if t is float:
            if v - v != 0.0:  # NaN or infinity
                return False
        elif t not in _PLAIN:
            return False
    return True


def decode(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a body into (kwargs, meta). MalformedMessage says what is wrong."""
    try:
        payload = _fast_loads(body)
    except ValueError:  # orjson refuses some valid JSON (integers beyond 64 bits): ask the stdlib
        try:
            payload = _loads(body.decode() if isinstance(body, (bytes, bytearray)) else body)
        except UnicodeDecodeError as exc:
            raise MalformedMessage(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
        except ValueError as exc:
            raise MalformedMessage(f"body is not JSON ({exc})") from None
        except RecursionError:
            raise MalformedMessage("body is JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise MalformedMessage(f"body is JSON {type(payload).__name__}, expected an object of keyword arguments")
    meta = payload.pop(META_KEY, None)
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise MalformedMessage(f"{META_KEY!r} must be an object, got {type(meta).__name__}")
    elif meta:
        check_meta(meta)
    return payload, meta


def _bad(name: str, value: Any, expected: str) -> MalformedMessage:
    return MalformedMessage(f"{META_KEY}.{name} must be {expected}, got {value!r:.80}")


def check_meta(meta: dict[str, Any]) -> None:
    """Every metadata field core reads has its type and range, or MalformedMessage says which not."""
    get = meta.get
    v = get("id")
    if v is not None and (type(v) is not str or not 0 < len(v) <= 200):
        raise _bad("id", v, "a string of 1 to 200 characters")
    v = get("published_at")
    if v is not None and not ((type(v) is float or type(v) is int) and 0 <= v < 1e11):
        raise _bad("published_at", v, "a UNIX time in seconds")
    v = get("eta")
    if v is not None and not ((type(v) is float or type(v) is int) and 0 <= v < 1e11):
        raise _bad("eta", v, "a UNIX time in seconds")
    v = get("expires_at")
    if v is not None and not ((type(v) is float or type(v) is int) and 0 <= v < 1e11):
        raise _bad("expires_at", v, "a UNIX time in seconds")
    v = get("attempt")
    if v is not None and (type(v) is not int or not 0 <= v < 1_000_000):
        raise _bad("attempt", v, "an integer >= 0")


def raw_for_dead_letter(body: bytes) -> dict[str, str]:
    """The original body as text, or base64 if it is not UTF-8."""
    try:
        return {"raw": body.decode()}
    except UnicodeDecodeError:
        return {"raw_base64": base64.b64encode(body).decode()}


def dumps(obj: Any) -> bytes:
    return _dumps(obj).encode()
