"""The embedded default broker, a queue in one sqlite file (``sqlite:///path.db``).

Only the standard library's ``sqlite3``: it ships with core, like ``memory://``.
"""

from .broker import SqliteBroker
from .params import database_path
from .state import SqliteState

__all__ = ["SqliteBroker", "SqliteState", "database_path"]
