# Exercise 10-predict-status: one status code per case (200, 400, 403, 408, 431, 501, 502,
# 504, 505 or 508).
predicted_status = {
    "no Host field": 400,  # Host is mandatory in HTTP/1.1
    "a huge header field": 431,  # Request Header Fields Too Large: the parser's limit
    "an ftp:// URL": 501,  # understood, but not implemented: an HTTP proxy
    "HTTP/2.0 in the request line": 505,  # HTTP Version Not Supported
    "a request that went through us": 508,  # Loop Detected: our own name in Via
    "an origin that answers garbage": 502,  # Bad Gateway: the origin failed us
    "an origin that closes at once": 502,  # so did this one, before any byte
    "an origin that cuts its body": 200,  # the head was relayed; then the connection is cut
}
