# Exercise 05-predict-pause: replace each ... with a number.
# 5 x 16 KiB = 80 KiB is the first total strictly above 64 KiB; paused, it is not told again.
predicted_first_pause = 5
predicted_pause_calls = 1
