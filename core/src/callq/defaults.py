"""Core's own plugins, registered the same way a third party's are."""

from __future__ import annotations

from .controls import Control
from .controls.blackout import Blackout
from .controls.dedup import Dedup
from .controls.delay import Delay
from .controls.expiry import Expiry
from .controls.idle import StopWhenIdle
from .controls.pause import Pause
from .controls.rate import Rate
from .controls.ratelog import RateLog
from .controls.retry import RetryPolicy
from .controls.timeout import Timeout
from .hookspecs import hookimpl

BUILTIN_CONTROLS: list[type[Control]] = [
    Expiry, Dedup, Blackout, Pause, Delay, Rate, Timeout, RetryPolicy, StopWhenIdle, RateLog,
]


class CoreControls:
    """Registers the built-in controls."""

    @hookimpl
    def callq_controls(self) -> list[type[Control]]:
        return list(BUILTIN_CONTROLS)


def _results() -> object:
    from .results.plugin import ResultsPlugin

    return ResultsPlugin()


def _consumers() -> object:
    from .registry import ConsumerRegistry

    return ConsumerRegistry()


def _history() -> object:
    from .history.plugin import from_env

    return from_env()


DEFAULT_PLUGINS = {"callq.default.controls": CoreControls, "callq.default.results": _results,
                   "callq.default.consumers": _consumers, "callq.default.history": _history}
