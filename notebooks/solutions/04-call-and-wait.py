# Exercise 04-call-and-wait: post fn to the loop, wait on a Future for its outcome.
import concurrent.futures
from collections.abc import Callable
from typing import Any

from minireactor import Reactor


def call_and_wait(reactor: Reactor, fn: Callable[[], Any], timeout: float) -> Any:
    if reactor.in_loop_thread():
        raise RuntimeError("call_and_wait() on the loop's thread would wait for itself")
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def on_loop() -> None:
        if not future.set_running_or_notify_cancel():
            return  # the caller gave up already
        try:
            future.set_result(fn())
        except Exception as error:
            future.set_exception(error)

    reactor.call_soon_threadsafe(on_loop)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"the loop did not run fn within {timeout} s") from None
