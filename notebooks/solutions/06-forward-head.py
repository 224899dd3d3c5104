# Exercise 06-forward-head: origin-form, Host from the URL, hop-by-hop out, Via in.
from urllib.parse import urlsplit

from proxy.http11 import Headers, Request, serialize_request_head

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
}


def origin_head(request: Request, pseudonym: str) -> bytes:
    url = urlsplit(request.target)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    host = url.hostname or ""
    authority = host if url.port in (None, 80) else f"{host}:{url.port}"
    named = {token.strip().lower() for token in request.headers.get_list("connection")}
    drop = HOP_BY_HOP | named | {"host"}
    headers = Headers([("Host", authority)])
    for name, value in request.headers:
        if name.lower() not in drop:
            headers.add(name, value)
    headers.add("Via", f"{request.version.removeprefix('HTTP/')} {pseudonym}")
    return serialize_request_head(request.method, path, headers)
