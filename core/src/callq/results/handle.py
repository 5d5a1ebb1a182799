"""``push()`` returns an :class:`AsyncResult`: the message id (a ``str``) that can also wait
for the call's result."""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import CallqError, ConfigError
from .store import FINAL, Record, ResultStore, open_store, store_url_for


class ResultsOff(ConfigError):
    """The task keeps no results, so there is nothing to wait for."""


class RemoteError(CallqError):
    """The call ended without a value: it raised for good (``dead``), its result could not be
    stored (``failed``), or it was dropped (``expired``, ``skipped``).

    ``type_name``, ``message`` and ``traceback`` are those of the remote exception.
    """

    def __init__(self, record: Record) -> None:
        self.record = record
        self.status: str = record.get("status", "failed")
        error = record.get("error") or {}
        self.type_name: str | None = error.get("type")
        self.message: str = error.get("message") or record.get("reason") or ""
        self.traceback: str | None = error.get("traceback")
        head = f"{self.type_name}: {self.message}" if self.type_name else self.message
        text = f"call {record.get('id')} {self.status}: {head}"
        if self.traceback:
            text += "\n\nRemote traceback:\n" + self.traceback.rstrip()
        super().__init__(text)


class AsyncResult(str):
    """A published call's id that can wait for its result.

    It is the message id string itself, so code that kept ids keeps working. Any process can
    rebuild one: ``AsyncResult(id, task=f)`` or ``AsyncResult(id, store="redis://...")``.
    """

    _task: Any = None
    _store_url: str | None = None

    def __new__(cls, call_id: str, task: Any = None, *, store: str | None = None) -> AsyncResult:
        obj = str.__new__(cls, call_id)
        obj._task = task
        if store is not None:  # the class default otherwise: one attribute set less per push
            obj._store_url = store
        return obj

    def __reduce__(self) -> Any:
        return (AsyncResult, (str(self),), {"_task": None, "_store_url": self._store_url})

    @property
    def id(self) -> str:
        return str(self)

    @property
    def store(self) -> ResultStore:
        """The result store of this call; :class:`ResultsOff` if its task keeps none."""
        url = self._store_url
        if url is None:
            task = self._task
            if task is None:
                raise ConfigError(f"call {self.id}: no result store known; rebuild the handle with "
                                  "AsyncResult(id, task=...) or AsyncResult(id, store='redis://...')")
            from ..plugins import get_plugin_manager

            if get_plugin_manager().is_blocked("callq.default.results"):
                raise ResultsOff("results are off in this process: CALLQ_DISABLE_PLUGINS blocks "
                                 "callq.default.results")
            url = store_url_for(task.options)
            if url is None:
                raise ResultsOff(
                    f"task {task.name} keeps no results (results={task.options.results!r}"
                    + ("" if task.options.results is False else "; its broker has no shared store")
                    + "): set results= on the task, e.g. @callq.task(..., results='redis://localhost:6379/0')")
            self._store_url = url
        return open_store(url)

    def info(self) -> Record | None:
        """The stored record (status, result, error, attempt, times), or None while pending."""
        return self.store.get(self.id)

    @property
    def status(self) -> str:
        """pending, running, done, failed, dead, expired or skipped."""
        record = self.info()
        return record.get("status", "pending") if record else "pending"

    def ready(self) -> bool:
        return self.status in FINAL

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the call and return its value.

        Raises :class:`RemoteError` if it ended without one, ``TimeoutError`` after ``timeout``
        seconds, :class:`ResultsOff` at once if the task keeps no results.
        """
        record = self.store.wait(self.id, timeout)
        if record is None:
            raise TimeoutError(f"call {self.id}: no result within {timeout}s (status {self.status})")
        if record.get("status") == "done":
            return record.get("result")
        raise RemoteError(record)

    async def result_async(self, timeout: float | None = None) -> Any:
        """``result()`` for asyncio callers (waits in a worker thread)."""
        store = self.store  # errors at once, in the caller's task
        del store
        return await asyncio.to_thread(self.result, timeout)

    def __repr__(self) -> str:
        return f"AsyncResult({str(self)!r})"
