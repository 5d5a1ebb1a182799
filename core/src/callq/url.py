"""Broker URLs: parsed once, query parameters read with clear errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class BrokerURL:
    """A broker URL split into parts. ``str(url)`` hides the password."""

    raw: str
    scheme: str
    host: str | None
    port: int | None
    username: str | None
    password: str | None
    path: str
    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str) -> BrokerURL:
        if not isinstance(raw, str) or "://" not in raw:
            raise ConfigError(
                f"broker URL {raw!r} is not a URL; expected e.g. 'memory://', "
                "'sqlite:///path/to/file.db' or 'redis://localhost:6379/0'"
            )
        parts = urlsplit(raw)
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"broker URL {_mask(raw)!r}: bad port ({exc})") from None
        query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in query:
                raise ConfigError(f"broker URL {_mask(raw)!r}: parameter {key!r} given twice")
            query[key] = value
        return cls(
            raw=raw,
            scheme=parts.scheme.lower(),
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            path=unquote(parts.path),
            query=query,
        )

    def __str__(self) -> str:
        return _mask(self.raw)

    def check_params(self, known: Iterable[str]) -> None:
        """Raise ConfigError naming any query parameter not in ``known``."""
        known = set(known)
        unknown = sorted(set(self.query) - known)
        if unknown:
            raise ConfigError(
                f"broker URL {self}: unknown parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )

    def param(self, name: str, convert: Callable[[str], T], default: T) -> T:
        """Read query parameter ``name`` through ``convert``; ConfigError if it does not parse."""
        if name not in self.query:
            return default
        value = self.query[name]
        try:
            return convert(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"broker URL {self}: parameter {name}={value!r} is invalid ({exc})") from None

    def float_param(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.param(name, float, default)
        if value < minimum:
            raise ConfigError(f"broker URL {self}: parameter {name} must be >= {minimum}, got {value}")
        return value

    def int_param(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self.param(name, int, default)
        if value < minimum:
            raise ConfigError(f"broker URL {self}: parameter {name} must be >= {minimum}, got {value}")
        return value

    def bool_param(self, name: str, default: bool) -> bool:
        return self.param(name, _to_bool, default)

    def str_param(self, name: str, default: str, *, choices: Iterable[str] | None = None) -> str:
        value = self.query.get(name, default)
        if choices is not None and value not in set(choices):
            raise ConfigError(
                f"broker URL {self}: parameter {name}={value!r} must be one of {', '.join(sorted(choices))}"
            )
        return value


def _to_bool(value: str) -> bool:
    low = value.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("expected true/false, yes/no, on/off or 1/0")


def _mask(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.password is None:
        return raw
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
