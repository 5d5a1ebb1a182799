"""callq-mongo: a callq broker on MongoDB (``mongodb://host:27017/db?lease=15``)."""

from .broker import MongoBroker

__all__ = ["MongoBroker"]
__version__ = "0.1.0"
