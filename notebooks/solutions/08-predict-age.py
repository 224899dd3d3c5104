# Exercise 08-predict-age: replace each ... with a number of seconds.
predicted_lifetime = 30  # s-maxage: the proxy is a shared cache, so it wins over max-age
# apparent_age = max(0, 1003 - 1023) = 0; corrected_age_value = 10 + (1003 - 1000) = 13
predicted_age_at_arrival = 13
predicted_stale_after = 17  # fresh while 30 > age, and the age grows from 13
