# Exercise 01-predict-stall: replace ... with a number of seconds.
# The server takes the queued connections one at a time: 0.4 s on each silent client.
predicted_wait = 0.8
