"""callq: run any plain function distributed, concurrent and rate-controlled through a queue."""

from typing import TYPE_CHECKING, Any

from .broker import BrokerBase, Capabilities, Connection, Delivery, connect
from .consumer import Consumer, Stats
from .context import CallContext, current
from .controls import Control, Defer, Drop, Hold, Skip, Verdict
from .errors import BrokerError, BrokerNotFound, CallqError, ConfigError, Reject, Requeue, Retry
from .hookspecs import hookimpl
from .lifecycle import running_consumers, stop_all, wait
from .options import TaskOptions
from .plugins import get_plugin_manager, register, unregister
from .processes import ProcessGroup
from .results import AsyncResult, RemoteError, ResultsOff
from .state import StateStore
from .task import Task, is_paused, pause, resume, task

if TYPE_CHECKING:
    from .schedule import Scheduler, at, cron, crontab, every

__version__ = "0.1.0"

_SCHEDULE = frozenset({"Scheduler", "at", "cron", "crontab", "every"})


def __getattr__(name: str) -> Any:
    # the scheduler (and APScheduler, ~2 MB) loads on first use: workers do not pay for it
    if name in _SCHEDULE:
        from . import schedule

        return getattr(schedule, name)
    raise AttributeError(f"module 'callq' has no attribute {name!r}")

__all__ = [
    "AsyncResult", "BrokerBase", "BrokerError", "BrokerNotFound", "CallContext", "CallqError", "Capabilities",
    "ConfigError", "Connection", "Consumer", "Control", "Defer", "Drop", "Hold", "Skip", "Verdict", "Delivery", "Reject", "Requeue", "Retry", "Stats",
    "RemoteError", "ResultsOff",
    "Task", "TaskOptions", "connect", "current", "get_plugin_manager", "hookimpl", "register",
    "ProcessGroup", "Scheduler", "StateStore", "at", "cron", "crontab", "every", "is_paused", "pause", "resume", "running_consumers", "stop_all", "task",
    "unregister", "wait",
]
