# Exercise 04-waker: a socket pair; one byte written ends the reader's select().
import socket


class SelfPipe:
    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)  # wake() must never block

    def fileno(self) -> int:
        return self._reader.fileno()

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except BlockingIOError:
            pass  # the buffer is full: the reader is readable already
        except OSError:
            pass  # closed: nobody is left to wake

    def drain(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
