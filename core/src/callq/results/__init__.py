"""Results (RPC): ``h = f.push(2, 3); h.result(timeout=10)``.

See :class:`AsyncResult` for the handle, :mod:`callq.results.store` for stores and how a
task's store is chosen, :mod:`callq.results.plugin` for how results get written.
"""

from .handle import AsyncResult, RemoteError, ResultsOff
from .plugin import ResultsPlugin, writer
from .store import FINAL, STATUSES, ResultStore, open_store, store_url_for

__all__ = ["AsyncResult", "FINAL", "RemoteError", "ResultStore", "ResultsOff", "ResultsPlugin", "STATUSES",
           "open_store", "store_url_for", "writer"]
