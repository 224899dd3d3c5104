# Exercise 02-echo-two: one thread, one selector, every client echoed.
import selectors
import socket
import threading


def serve_echo(
    listener: socket.socket, stop: threading.Event, selector: selectors.BaseSelector
) -> None:
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, data="listener")
    try:
        while not stop.is_set():
            for key, _mask in selector.select(timeout=0.05):  # short: so we notice `stop`
                if key.data == "listener":
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    selector.register(conn, selectors.EVENT_READ, data="client")
                    continue
                client = key.fileobj
                assert isinstance(client, socket.socket)
                try:
                    data = client.recv(1024)
                except ConnectionError:
                    data = b""
                if data:
                    client.send(data)  # a short echo fits in the send buffer (rung 5 does better)
                else:
                    selector.unregister(client)
                    client.close()
    finally:
        for key in list(selector.get_map().values()):
            selector.unregister(key.fileobj)
            if key.data == "client":
                assert isinstance(key.fileobj, socket.socket)
                key.fileobj.close()
