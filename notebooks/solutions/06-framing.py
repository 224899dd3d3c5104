# Exercise 06-framing: RFC 9112 section 6.3, in order, refusing what could be read two ways.
import re

from proxy.http11 import Headers, ProtocolError


def body_framing(method: str, status: int, version: str, headers: Headers) -> int | str:
    if method == "HEAD" or status < 200 or status in (204, 304):
        return 0  # rule 1
    if "transfer-encoding" in headers:
        if version == "HTTP/1.0":
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 response", 502)
        if "content-length" in headers:
            raise ProtocolError("both Transfer-Encoding and Content-Length", 502)  # rule 3
        codings = [coding.lower() for coding in headers.get_list("transfer-encoding")]
        if codings[-1] != "chunked":
            return "until-close"  # rule 4, for a response
        if codings.count("chunked") != 1:
            raise ProtocolError("chunked applied more than once", 502)
        return "chunked"
    if "content-length" in headers:
        lengths = set()
        for value in headers.get_all("content-length"):
            for item in value.split(","):
                item = item.strip(" \t")
                if not re.fullmatch(r"[0-9]{1,18}", item):
                    raise ProtocolError(f"malformed Content-Length {item!r}", 502)
                lengths.add(int(item))
        if len(lengths) != 1:
            raise ProtocolError("conflicting Content-Length values", 502)  # rule 5
        return lengths.pop()  # rule 6
    return "until-close"  # rule 8
