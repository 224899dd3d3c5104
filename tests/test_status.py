"""The proxy's own pages, driven without sockets: what a client's fields can and cannot do."""

from __future__ import annotations

from types import SimpleNamespace

from proxy.http11 import Headers, Request
from proxy.status import pac_file, serve_status


class Answers:
    """Stands in for a session: records what serve_status answers."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, str]] = []

    def answer(self, status: int, body: bytes, *, content_type: str = "", result: str = "") -> None:
        self.sent.append((status, body, content_type))

    def answer_error(self, status: int, detail: str, *, result: str = "") -> None:
        self.sent.append((status, detail.encode(), "text/html"))


def _pac_for(host_field: str) -> str:
    ctx = SimpleNamespace(own_addresses={("0.0.0.0", 4095)})
    session = Answers()
    request = Request("GET", "/proxy.pac", "HTTP/1.1", Headers([("Host", host_field)]))
    serve_status(ctx, session, request)  # type: ignore[arg-type]
    status, body, content_type = session.sent[0]
    assert status == 200 and content_type == "application/x-ns-proxy-autoconfig"
    return body.decode()


def test_pac_names_the_host_the_client_used_when_listening_on_all_interfaces():
    assert _pac_for("proxy.lan:4095") == pac_file("proxy.lan", 4095)


def test_pac_never_copies_script_from_the_host_field():
    pac = _pac_for('x";alert(1);//:4095')
    assert "alert" not in pac
    assert pac == pac_file("127.0.0.1", 4095)


def test_own_pages_are_read_only():
    ctx = SimpleNamespace(own_addresses={("127.0.0.1", 4095)})
    session = Answers()
    serve_status(ctx, session, Request("POST", "/", "HTTP/1.1", Headers()))  # type: ignore[arg-type]
    assert session.sent[0][0] == 405
