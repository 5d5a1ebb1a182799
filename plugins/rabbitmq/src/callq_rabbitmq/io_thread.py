"""The I/O thread: one pika ``SelectConnection``, its reconnects, and the operations other threads queue."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pika
import pika.exceptions

from callq.errors import BrokerError
from callq.url import BrokerURL

from .consume_channel import ConsumeChannel
from .errors import channel_error, describe_error
from .op_queue import Op, OpQueue
from .publish_channel import PublishChannel

log = logging.getLogger("callq.rabbitmq")


class IoThread:
    """Runs one AMQP connection on a private thread; nothing else touches pika objects.

    Connects to each host in turn, then opens the publish channel, then the consume channel, and
    is ready. Other threads ``submit`` (or ``call``) operations; the thread runs them while both
    channels are open. A lost connection is opened again with backoff (0.2 s doubling to 5 s);
    a channel closed by RabbitMQ is reopened at once.
    """

    def __init__(self, url: BrokerURL, params: list[pika.ConnectionParameters], publisher: PublishChannel,
                 consumer: ConsumeChannel, name: str) -> None:
        self.url = url
        self.publisher = publisher
        self.consumer = consumer
        self.ready = threading.Event()  # both channels open (cleared when the connection drops)
        self._params_list = params
        self._params = params[0]
        self._next_host = 0
        self._lock = threading.Lock()
        self._ops = OpQueue(url)
        self._closing = False
        self._stop = threading.Event()
        self._loop_live = False
        self._first_error: BaseException | None = None
        self._startup = threading.Event()  # set when first ready, or on a refusal that retrying cannot fix
        self._conn: pika.SelectConnection | None = None  # the current connection (set by the I/O thread)
        self._thread = threading.Thread(target=self._io_main, name=name, daemon=True)

    # --- any thread -------------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Connect; BrokerError (and the thread stops) when not ready within ``timeout`` seconds."""
        self._thread.start()
        self._startup.wait(timeout)
        if not self.ready.is_set():
            self._closing = True
            self._ops.close()
            self._stop.set()
            err = self._first_error
            cause = describe_error(err) if err else f"no answer within {timeout:g}s"
            raise BrokerError(f"cannot connect to RabbitMQ at {self.url}: {cause}")

    def submit(self, op: Op) -> Future[Any]:
        """Queue ``op`` for the I/O thread; BrokerError once stopped."""
        fut = self._ops.put(op)
        self._wake()
        return fut

    def call(self, op: Op, timeout: float, what: str) -> Any:
        """Run ``op`` and wait for its result; BrokerError when not connected or not answered in time."""
        return self._ops.result(self.submit(op), timeout, what)

    def stop(self) -> bool:
        """Refuse new operations and close the connection (queued acks go out first); False if stopped already."""
        with self._lock:
            if self._closing:
                return False
            self._closing = True
            self._ops.close()
            if self._loop_live and self._conn is not None:
                try:
                    self._conn.ioloop.add_callback_threadsafe(self._do_close)
                except Exception:  # noqa: BLE001
                    pass
        self._stop.set()
        return True

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("RabbitMQ I/O thread of %s did not stop", self.url)

    def _wake(self) -> None:
        """Ask the I/O thread to run queued operations."""
        with self._lock:
            if not self._loop_live or self._conn is None:
                return
            try:
                self._conn.ioloop.add_callback_threadsafe(self._run_ops)
            except Exception:  # noqa: BLE001 - the loop is going away; ops run after reconnect
                pass

    # --- the I/O thread ---------------------------------------------------------------------------

    def _io_main(self) -> None:
        backoff = 0.2
        while not self._closing:
            self._params = self._params_list[self._next_host % len(self._params_list)]
            try:
                conn = pika.SelectConnection(self._params, on_open_callback=self._on_open,
                                             on_open_error_callback=self._on_open_error,
                                             on_close_callback=self._on_closed)
            except Exception as exc:  # noqa: BLE001 - bad parameters or resolver errors; retried
                self._first_error = self._first_error or exc
                log.warning("RabbitMQ connection to %s failed (%s); retrying in %.1fs", self.url, exc, backoff)
                self._next_host += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._conn = conn
            with self._lock:
                self._loop_live = True
            try:
                conn.ioloop.start()
            except Exception:  # noqa: BLE001 - keep the thread alive; reconnect below
                log.exception("RabbitMQ I/O loop of %s failed", self.url)
            was_ready = self.ready.is_set()
            with self._lock:
                self._loop_live = False
                self.ready.clear()
            err = BrokerError(f"connection to RabbitMQ at {self.url} lost")
            self.consumer.closed(err)
            self.publisher.closed(err)
            try:
                conn.ioloop.close()
            except Exception:  # noqa: BLE001
                pass
            if self._closing:
                break
            if was_ready:
                backoff = 0.2
            if len(self._params_list) > 1:  # try the next node of the cluster
                self._next_host += 1
            # before the first success the constructor reports the failure itself
            log.log(logging.WARNING if self._startup.is_set() else logging.DEBUG,
                    "RabbitMQ connection to %s:%s lost; reconnecting in %.1fs",
                    self._params.host, self._params.port, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        self._ops.fail_all()

    def _on_open(self, conn: pika.SelectConnection) -> None:
        if self._closing:
            conn.close()
            return
        conn.channel(on_open_callback=self._on_publish_channel)

    def _on_open_error(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        self._first_error = self._first_error or exc
        if isinstance(exc, (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError,
                            pika.exceptions.ProbableAccessDeniedError)):
            self._startup.set()  # wrong credentials or vhost: fail the constructor now
        log.debug("RabbitMQ connection to %s failed: %r", self.url, exc)
        conn.ioloop.stop()

    def _on_closed(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        if not self._closing:
            log.warning("RabbitMQ connection to %s closed: %r", self.url, exc)
        conn.ioloop.stop()

    def _on_publish_channel(self, ch: Any) -> None:
        self.publisher.opened(ch, on_closed=self._on_publish_channel_closed, on_ready=self._on_publish_ready)

    def _on_publish_ready(self) -> None:
        cch = self.consumer.channel
        if cch is None or not cch.is_open:
            assert self._conn is not None
            self._conn.channel(on_open_callback=self._on_consume_channel)
        else:
            self._run_ops()

    def _on_consume_channel(self, ch: Any) -> None:
        self.consumer.opened(ch, on_closed=self._on_consume_channel_closed)
        self.ready.set()
        self._startup.set()
        self._run_ops()

    def _on_publish_channel_closed(self, ch: Any, reason: BaseException) -> None:
        self._channel_closed(self.publisher, ch, reason, self._on_publish_channel, "publish channel", "reopening")

    def _on_consume_channel_closed(self, ch: Any, reason: BaseException) -> None:
        self._channel_closed(self.consumer, ch, reason, self._on_consume_channel, "consume channel",
                             "reopening and re-subscribing")

    def _channel_closed(self, side: PublishChannel | ConsumeChannel, ch: Any, reason: BaseException,
                        reopened: Callable[[Any], None], what: str, then: str) -> None:
        """Fail ``side``'s waiting operations; reopen it unless the connection is going away."""
        if ch is not side.channel:
            return
        side.closed(channel_error(reason, self.url))
        if self._closing or self._conn is None or not self._conn.is_open:
            return
        log.warning("RabbitMQ %s closed: %s; %s", what, reason, then)
        self._conn.channel(on_open_callback=reopened)

    def _run_ops(self) -> None:
        """Run queued operations (only while both channels are open)."""
        if not self.ready.is_set() or self.publisher.channel is None or self.consumer.channel is None:
            return
        self._ops.run()

    def temp_channel(self, action: Callable[[Any, Callable[[Any], None]], None], fut: Future[Any]) -> None:
        """Op: run ``action(channel, done)`` on a short-lived channel; 404 (no such queue) answers 0, not an error."""
        assert self._conn is not None

        def closed(_ch: Any, reason: BaseException) -> None:
            if fut.done():
                return
            if isinstance(reason, pika.exceptions.ChannelClosedByBroker) and reason.reply_code == 404:
                fut.set_result(0)
            else:
                fut.set_exception(channel_error(reason, self.url))

        def opened(ch: Any) -> None:
            ch.add_on_close_callback(closed)

            def done(result: Any) -> None:
                if not fut.done():
                    fut.set_result(result)
                if ch.is_open:
                    ch.close()

            action(ch, done)

        self._conn.channel(on_open_callback=opened)

    def _do_close(self) -> None:
        self._run_ops()  # acks queued before close go out first
        conn = self._conn
        if conn is None:
            return
        try:
            if conn.is_open:
                conn.close()  # unacked deliveries go back to their queues
            elif conn.is_closed:
                conn.ioloop.stop()
            else:
                conn.close()
        except Exception:  # noqa: BLE001 - opening or closing already: just stop the loop
            conn.ioloop.stop()
