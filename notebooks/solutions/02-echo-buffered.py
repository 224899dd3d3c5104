# Exercise 02-echo-buffered: a buffer per client, EVENT_WRITE only while it holds bytes,
# and no reading from a client whose buffer is full (so memory stays bounded).
import selectors
import socket
import threading

MAX_PENDING = 1024 * 1024


def serve_echo_buffered(
    listener: socket.socket, stop: threading.Event, selector: selectors.BaseSelector
) -> None:
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, data=None)
    pending: dict[socket.socket, bytearray] = {}

    def update(conn: socket.socket) -> None:
        """Watch for what this client's state calls for: read unless full, write if owed."""
        events = 0
        if len(pending[conn]) < MAX_PENDING:
            events |= selectors.EVENT_READ
        if pending[conn]:
            events |= selectors.EVENT_WRITE
        selector.modify(conn, events, data=pending[conn])

    def drop(conn: socket.socket) -> None:
        selector.unregister(conn)
        del pending[conn]
        conn.close()

    try:
        while not stop.is_set():
            for key, mask in selector.select(timeout=0.05):
                if key.data is None:
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    pending[conn] = bytearray()
                    selector.register(conn, selectors.EVENT_READ, data=pending[conn])
                    continue
                client = key.fileobj
                assert isinstance(client, socket.socket)
                buffer = pending[client]
                try:
                    if mask & selectors.EVENT_READ:
                        data = client.recv(65536)
                        if not data:
                            drop(client)
                            continue
                        buffer += data
                    if mask & selectors.EVENT_WRITE or buffer:
                        try:
                            sent = client.send(buffer)
                        except BlockingIOError:
                            sent = 0
                        del buffer[:sent]
                except ConnectionError:
                    drop(client)
                    continue
                update(client)
    finally:
        for conn in list(pending):
            drop(conn)
        selector.unregister(listener)
