"""callq-sql: callq queues in SQL tables (``postgresql://``, ``mysql://``, ``mariadb://``)."""

from .broker import SqlBroker
from .schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "SqlBroker"]
__version__ = "0.1.0"
