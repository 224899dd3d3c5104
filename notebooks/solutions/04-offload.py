# Exercise 04-offload: the work runs in the pool; its outcome comes back through the waker.
import concurrent.futures
from collections.abc import Callable
from typing import Any

from minireactor import Reactor


def run_in_thread(
    reactor: Reactor,
    executor: concurrent.futures.Executor,
    work: Callable[[], Any],
    on_done: Callable[[Any, BaseException | None], object],
) -> None:
    def worker() -> None:
        try:
            result = work()
        except Exception as error:
            reactor.call_soon_threadsafe(on_done, None, error)
        else:
            reactor.call_soon_threadsafe(on_done, result, None)

    executor.submit(worker)
