"""The proxy's own pages, driven without sockets: what a client's fields can and cannot do."""

from __future__ import annotations

import json

from proxy.http11 import Headers, Request
from proxy.policy import LocalReply, Refusal
from proxy.session.local import LocalPages, pac_file


def _pages(*own: tuple[str, int]) -> LocalPages:
    return LocalPages(lambda viewer: {"uptime_seconds": 1.5, "viewer": viewer}, lambda: set(own))


def _pac_for(host_field: str) -> str:
    request = Request("GET", "/proxy.pac", "HTTP/1.1", Headers([("Host", host_field)]))
    reply = _pages(("0.0.0.0", 4095)).reply_for(request)
    assert isinstance(reply, LocalReply)
    assert reply.status == 200 and reply.content_type == "application/x-ns-proxy-autoconfig"
    return reply.body.decode()


def test_pac_names_the_host_the_client_used_when_listening_on_all_interfaces():
    assert _pac_for("proxy.lan:4095") == pac_file("proxy.lan", 4095)


def test_pac_never_copies_script_from_the_host_field():
    pac = _pac_for('x";alert(1);//:4095')
    assert "alert" not in pac
    assert pac == pac_file("127.0.0.1", 4095)


def test_own_pages_are_read_only():
    reply = _pages(("127.0.0.1", 4095)).reply_for(Request("POST", "/", "HTTP/1.1", Headers()))
    assert isinstance(reply, Refusal) and reply.status == 405 and reply.result == "TCP_LOCAL"


def test_stats_json_is_the_snapshot_and_unknown_pages_are_404():
    pages = _pages(("127.0.0.1", 4095))
    reply = pages.reply_for(Request("GET", "/stats.json", "HTTP/1.1", Headers()))
    assert isinstance(reply, LocalReply)
    assert json.loads(reply.body) == {"uptime_seconds": 1.5, "viewer": None}
    missing = pages.reply_for(Request("GET", "/nope", "HTTP/1.1", Headers()))
    assert isinstance(missing, Refusal) and missing.status == 404


def test_with_authentication_each_user_sees_only_their_own_requests_unless_admin():
    pages = LocalPages(
        lambda viewer: {"viewer": viewer},
        lambda: {("127.0.0.1", 4095)},
        private=True,
        admins={"root"},
    )
    request = Request("GET", "/stats.json", "HTTP/1.1", Headers())

    def viewer_for(user):
        reply = pages.reply_for(request, user)
        assert isinstance(reply, LocalReply)
        return json.loads(reply.body)["viewer"]

    assert viewer_for("alice") == "alice"
    assert viewer_for("root") is None


def test_recent_requests_lose_their_query_strings_and_can_be_one_users():
    from proxy.accesslog import AccessRecord
    from proxy.stats import Stats

    stats = Stats(clock=lambda: 100.0)
    for user, url in (("alice", "http://a.test/x?token=s3cret"), ("bob", "http://b.test/y")):
        stats.finished(
            AccessRecord(
                100.0, 0.1, "127.0.0.1", 5, "GET", url, 200, 1, result="TCP_MISS", user=user
            )
        )
    urls = [r["url"] for r in stats.snapshot()["recent"]]
    assert urls == ["http://b.test/y", "http://a.test/x"]
    assert [r["url"] for r in stats.snapshot("alice")["recent"]] == ["http://a.test/x"]
