# Exercise 09-predict-log: for each request, (the method field, does "hunter2" appear?).
# The proxy logs what it parsed: a proxied GET whole, a tunnel only as CONNECT host:port,
# whatever went through it afterwards, encrypted or not.
predicted = {
    "plain GET": ("GET", True),
    "TLS in a tunnel": ("CONNECT", False),
    "plain HTTP in a tunnel": ("CONNECT", False),
}
