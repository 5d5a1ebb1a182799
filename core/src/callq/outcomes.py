"""Acting on a call's outcome: ack, retry, requeue or dead-letter, then tell the controls and
plugins (per call, and in batches to the observers that keep the fast path).

A mixin of :class:`callq.consumer.Consumer`. An exception in a plugin's hook or a control's
phase is logged and the call still settles.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .context import CallContext
from .controls import Drop, Verdict, safely
from .message import MalformedMessage

if TYPE_CHECKING:
    from .broker import Delivery
    from .consumer import Consumer

log = logging.getLogger("callq.worker")

_DLQ = "callq.to_dlq"


class Outcomes:
    """Settles what came of a call and tells whoever watches."""

    def call_hook(self: Consumer, name: str, **kwargs: Any) -> None:  # type: ignore[misc]
        try:
            getattr(self.conn.hook, name)(**kwargs)
        except Exception:  # noqa: BLE001
            log.exception("plugin hook %s failed (ignored)", name)

    def fail(self: Consumer, call: CallContext, error: BaseException) -> None:  # type: ignore[misc]
        """The call failed (the caller claimed it): the retry policy decides what comes next."""
        call.error = error
        call.outcome = "dead"
        call.reason = "failed"
        for control in self.controls.classify:  # type: ignore[attr-defined]
            safely(f"{control.name}.classify", control.classify, call)
        self.finish(call)

    def verdict(self: Consumer, call: CallContext, verdict: Verdict) -> None:  # type: ignore[misc]
        call.outcome = verdict.outcome
        call.reason = verdict.reason
        if isinstance(verdict, Drop) and verdict.to_dlq:
            call.stash[_DLQ] = True
        call.retry_delay = getattr(verdict, "delay", 0.0)
        self.finish(call)

    def malformed(self: Consumer, delivery: Delivery, exc: MalformedMessage) -> None:  # type: ignore[misc]
        self.count("malformed")
        log.error("malformed message on %s sent to %s: %s", self.queue, self.options.dlq, exc)
        if self.settler.dead_letter_raw(delivery, f"malformed: {exc}"):
            self.count("dead")
        if self._after_hooks or self._after_many_hooks:  # plugins see it; controls never ran it
            call = CallContext(self, delivery, {}, {})
            call.outcome, call.error, call.reason = "malformed", exc, f"malformed: {exc}"
            if self._after_hooks:
                self.call_hook("callq_after_call", call=call)
            if self._after_many_hooks:
                self.call_hook("callq_after_calls", calls=[call])

    def finish(self: Consumer, call: CallContext) -> None:  # type: ignore[misc]
        """Act on ``call.outcome``, then tell the controls and plugins."""
        if self.aborted:
            return  # its message went back to the queue when the consumer stopped at once
        try:
            self._act(call)
        except Exception as exc:  # noqa: BLE001 - never leave a delivery unsettled
            log.exception("could not settle %r; dead-lettering it with its raw body", call)
            self.settler.dead_letter_raw(call.delivery, f"could not settle ({call.outcome}): "
                                                        f"{type(exc).__name__}: {exc}")
        for control in self.controls.settled:  # type: ignore[attr-defined]
            safely(f"{control.name}.settled", control.settled, call)
        if self._after_hooks:
            self.call_hook("callq_after_call", call=call)
        if self._watch_settled:
            self.settled_many([call])

    def started_many(self: Consumer, calls: list[CallContext]) -> None:  # type: ignore[misc]
        for control in self.controls.started_many:  # type: ignore[attr-defined]
            safely(f"{control.name}.started_many", control.started_many, calls)

    def settled_many(self: Consumer, calls: list[CallContext]) -> None:  # type: ignore[misc]
        for control in self.controls.settled_many:  # type: ignore[attr-defined]
            safely(f"{control.name}.settled_many", control.settled_many, calls)
        if self._after_many_hooks:
            self.call_hook("callq_after_calls", calls=calls)

    def _act(self: Consumer, call: CallContext) -> None:  # type: ignore[misc]
        outcome = call.outcome
        settler = self.settler
        if outcome == "done":
            settler.ack(call.delivery)
            next(self._done)
        elif outcome == "retry":
            exc = call.error
            log.warning("%s failed (attempt %d/%d): %s: %s; retrying in %.2fs", self.task.name,
                        call.attempt + 1, self.options.max_retries + 1, type(exc).__name__, exc, call.retry_delay)
            self.count("failed")
            settler.retry(call)
            self.count("retried")
        elif outcome == "requeue":
            self.count("requeued")
            settler.requeue([call.delivery], call.retry_delay)
        elif outcome == "dead":
            exc = call.error
            self.count("failed")
            log.error("%s failed for good after %d attempt(s): %s: %s; dead-lettered to %s", self.task.name,
                      call.attempt + 1, type(exc).__name__, exc, self.options.dlq)
            settler.dead_letter(call, call.reason or "failed")
            self.count("dead")
        elif outcome in ("expired", "skipped"):
            self.count(outcome)
            if call.stash.get(_DLQ):
                log.warning("%s: %s %s; dead-lettered", self.queue, call.id, call.reason)
                settler.dead_letter(call, call.reason or outcome)
                self.count("dead")
            else:
                log.log(logging.WARNING if outcome == "expired" else logging.INFO,
                        "%s: %s %s: %s", self.queue, outcome, call.id, call.reason)
                settler.ack(call.delivery)
        else:
            raise ValueError(f"unknown outcome {outcome!r}")
