"""callq-zeromq: callq over ZeroMQ PUSH/PULL sockets, no server (``zmq://host:port``)."""

from .broker import ZeromqBroker

__all__ = ["ZeromqBroker"]
__version__ = "0.1.0"
