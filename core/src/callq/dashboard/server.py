"""``callq dashboard``: serve the app with uvicorn."""

from __future__ import annotations

import ipaddress
import secrets
import sys

from ..broker import resolve_url
from ..errors import ConfigError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(*, brokers: list[str] | None, history: str | None, host: str = "127.0.0.1", port: int = 8765,
          token: str | None = None) -> int:
    import uvicorn

    from .app import create_app

    public = not is_loopback(host)
    if public and not token:
        raise ConfigError(f"binding the dashboard to {host} needs a token: --token or CALLQ_DASHBOARD_TOKEN")
    if token is not None and len(token) < 8:
        raise ConfigError("the dashboard token must have at least 8 characters")
    given = token
    token = token or secrets.token_urlsafe(18)
    store = None
    if history:
        from ..history import HistoryStore

        store = HistoryStore(history)
    app = create_app([resolve_url(b) for b in (brokers or [None])], store, token=token, public=public)
    where = f"http://{host}:{port}"
    print(f"callq dashboard on {where}/  (actions: open {where}/login?token="
          f"{'<your token>' if given else token})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
