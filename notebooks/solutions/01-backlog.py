# Exercise 01-backlog: count the handshakes the kernel completes while nobody accepts.
import socket


def handshakes_before_stall(backlog: int, limit: int = 64) -> int:
    """Connect to a listener that never calls accept() until a connect() times out."""
    clients: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        try:
            while len(clients) < limit:
                client = socket.socket()
                client.settimeout(0.2)
                try:
                    client.connect(listener.getsockname())
                except TimeoutError:
                    client.close()
                    break
                clients.append(client)  # stays open: it holds its place in the queue
        finally:
            for client in clients:
                client.close()
    return len(clients)
