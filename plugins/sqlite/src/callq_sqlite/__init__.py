"""callq-sqlite: the embedded default broker, a queue in one sqlite file (``sqlite:///path.db``)."""

from .broker import SqliteBroker, database_path
from .state import SqliteState

__all__ = ["SqliteBroker", "SqliteState", "database_path"]
__version__ = "0.1.0"
