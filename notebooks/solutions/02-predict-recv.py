# Exercise 02-predict-recv: each outcome is "BlockingIOError" or the bytes recv() returns.
predicted_outcomes = ["BlockingIOError", b"ping", "BlockingIOError", b"", b""]
