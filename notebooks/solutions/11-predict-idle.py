# Exercise 11-predict-idle: replace each ... with your prediction.
# One thread per connection plus the one that accepts; the reactor keeps its one thread.
predicted_threads = {"threads": 201, "reactor": 1}
# Each thread reserves a whole stack (ulimit -s: 8 MiB), touched or not.
predicted_reserved_kib = 8_000
