"""minireactor: a small single-threaded reactor on :mod:`selectors`, written to be read.

It knows nothing of HTTP. The pieces, bottom up:

* :mod:`minireactor.timers` -- the timer heap with lazy cancellation;
* :mod:`minireactor.waker` -- the self-pipe that lets other threads wake the loop;
* :mod:`minireactor.loop` -- :class:`Reactor`, the loop itself;
* :mod:`minireactor.protocol` and :mod:`minireactor.transport` -- buffered streams with
  backpressure;
* :mod:`minireactor.server`, :mod:`minireactor.connect`, :mod:`minireactor.resolver` --
  listening, connecting and resolving without blocking;
* :mod:`minireactor.splice` -- relaying socket to socket through a borrowed pipe with
  ``os.splice``, the bytes never entering Python (Linux).
"""

from .connect import ConnectAttempt, connect, connect_host
from .loop import Reactor
from .protocol import Protocol, TransportLike
from .resolver import Resolver, StaticResolver, numeric_address
from .server import Server, bind_socket, listen
from .splice import PipePool, Splicer
from .timers import Clock, Deadline, Handle, TimerHandle
from .transport import Transport

__all__ = [
    "Clock",
    "ConnectAttempt",
    "Deadline",
    "Handle",
    "PipePool",
    "Protocol",
    "Reactor",
    "Resolver",
    "Server",
    "Splicer",
    "StaticResolver",
    "TimerHandle",
    "Transport",
    "TransportLike",
    "bind_socket",
    "connect",
    "connect_host",
    "listen",
    "numeric_address",
]

__version__ = "0.1.0"
