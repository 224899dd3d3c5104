# Exercise 04-predict-unsafe: seconds from the post until the callback runs.
# Nothing wakes select(): the callback waits for the timer due at 0.5 s, posted at 0.1 s.
predicted_delay = 0.4
