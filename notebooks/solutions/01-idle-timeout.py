# Exercise 01-idle-timeout: a thread per connection, and silence costs a client its slot.
import contextlib
import socket
import threading


def echo_until_idle(conn: socket.socket, idle_timeout: float, slots: threading.Semaphore) -> None:
    with conn:
        conn.settimeout(idle_timeout)  # restarts on every recv(): it bounds silence, not talk
        try:
            while data := conn.recv(1024):
                conn.sendall(data)
        except OSError:  # TimeoutError included: silent for too long
            pass
    slots.release()


def serve_with_idle_timeout(
    listener: socket.socket, stop: threading.Event, max_conns: int, idle_timeout: float
) -> None:
    listener.settimeout(0.05)
    slots = threading.BoundedSemaphore(max_conns)
    threads: list[threading.Thread] = []
    conns: list[socket.socket] = []
    try:
        while not stop.is_set():
            if not slots.acquire(timeout=0.05):
                continue
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                slots.release()
                continue
            conns.append(conn)
            thread = threading.Thread(target=echo_until_idle, args=(conn, idle_timeout, slots))
            thread.start()
            threads.append(thread)
    finally:
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=2)
