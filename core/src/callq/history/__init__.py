"""Call history: every call outcome in a SQL table (``pip install 'callq[sql]'``).

``CALLQ_HISTORY_URL=sqlite:///calls.db`` (or ``=1`` for the default file), or
``callq.history.enable(url)``; read with :class:`HistoryStore`.
"""

from .plugin import HistoryPlugin, default_url, disable, enable

__all__ = ["HistoryPlugin", "HistoryStore", "default_url", "disable", "enable"]


def __getattr__(name: str):  # HistoryStore needs SQLAlchemy: import it only when asked
    if name == "HistoryStore":
        from .store import HistoryStore

        return HistoryStore
    raise AttributeError(name)
