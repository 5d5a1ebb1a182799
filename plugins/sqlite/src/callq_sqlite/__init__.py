"""callq-sqlite: the embedded default broker, a queue in one sqlite file (``sqlite:///path.db``)."""

from .broker import SqliteBroker, database_path

__all__ = ["SqliteBroker", "database_path"]
__version__ = "0.1.0"
