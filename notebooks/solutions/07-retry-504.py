# Exercise 07-retry-504: a pooled connection dies, the retry's origin never answers.
TARGET = [
    "HEAD_RECEIVED", "ALLOWED", "RESOLVED", "CONNECTED", "RESPONSE_HEAD", "RESPONSE_DONE",
    "HEAD_RECEIVED", "POOLED_UPSTREAM", "RETRY", "RESOLVED", "CONNECTED",
    "FIRST_BYTE_TIMEOUT", "RESPONSE_DONE",
]  # fmt: skip
GET = "GET http://origin.test/page HTTP/1.1\r\nHost: origin.test\r\n\r\n"


def retry_then_504(world):
    """Drive one client on `world` through TARGET's moves; return the client."""
    client = world.client()
    client.send(GET)  # request 1: resolve, connect, forward
    world.origin().feed(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")  # back to the pool
    client.send(GET)  # request 2 goes to the pooled connection...
    world.origin().lose()  # ...which dies before answering: a GET may be retried
    world.clock.advance(30.0)  # the new connection stays silent: first_byte_timeout
    return client
