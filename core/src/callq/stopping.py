"""Stopping a consumer: gracefully (finish running calls) or at once (hand everything back).

A mixin of :class:`callq.consumer.Consumer`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from .controls import safely
from .lifecycle import unregister_running

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger("callq.worker")


class Stopping:
    def abort(self: Consumer) -> None:  # type: ignore[misc]
        """Stop at once: ack what finished, give every unfinished message back (running calls
        included: they will run again, at-least-once) and let the process exit."""
        if self.aborted:
            return
        self.aborted = True
        self.stop()
        try:
            self.settler.flush()
            self.settler.closed = True
            log.warning("%s: stopping at once: %d unfinished message(s) go back to the queue (%d call(s) "
                        "still running will run again)", self.queue, self._unacked, self.pool.busy)
            self.conn.close()  # a broker gives back every unacked delivery on close
        except Exception:  # noqa: BLE001
            log.exception("%s: handing back messages failed; they return after the broker's lease", self.queue)
        finally:
            self._handed_back.set()

    def _shutdown(self: Consumer) -> None:  # type: ignore[misc]
        with self._lock:
            held = [call.delivery for call in self._held.clear()]
        if held and not self.aborted:
            self.settler.requeue(held)
        deadline = time.monotonic() + self.options.shutdown_timeout
        while not self.aborted and not self.pool.wait_idle(0.1):  # a second signal cuts this short
            if time.monotonic() > deadline:
                log.warning("%d call(s) of %s still running after %.0fs; their messages return after the "
                            "lease", self.pool.busy, self.queue, self.options.shutdown_timeout)
                break
        if self.aborted:
            self._handed_back.wait(5)
        else:
            self.settler.drain(10)
        self.pool.shutdown()
        self._stopped.set()
        self.settler.wake.set()
        for control in self.controls.stop:  # type: ignore[attr-defined]
            safely(f"{control.name}.stop", control.stop)
        try:
            self.call_hook("callq_consumer_stopped", consumer=self)
        finally:
            unregister_running(self)
            s = self.stats()
            log.info("stopped %s: %d done, %d retried, %d dead-lettered in %.1fs",
                     self.queue, s.done, s.retried, s.dead, s.elapsed)
