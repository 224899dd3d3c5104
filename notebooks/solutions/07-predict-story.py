# Exercise 07-predict-story: replace each ... with a list of trigger names (or a number).
# Request 2: the copy is fresh, so the cache answers alone.
predicted_second = ["HEAD_RECEIVED", "CACHEABLE", "FRESH_HIT", "RESPONSE_DONE"]
# 61 s of silence: past keepalive_timeout (60 s), IDLE closes, and connection_lost ends it.
predicted_silence = ["IDLE_TIMEOUT", "CLOSED"]
# Request 3: stale, but it has an ETag: a MISS for the lookup, a new origin connection (the
# pooled one expired after 30 s), a conditional GET, and the origin's 304 confirms the copy.
predicted_third = [
    "HEAD_RECEIVED",
    "CACHEABLE",
    "MISS",
    "RESOLVED",
    "CONNECTED",
    "NOT_MODIFIED",
    "RESPONSE_DONE",
]
predicted_origin_connections = 2
