# Exercise 03-predict-ticks: (tick, name) pairs, in the order they are logged.
predicted_log = [(1, "a"), (1, "b"), (1, "timer"), (2, "c")]
