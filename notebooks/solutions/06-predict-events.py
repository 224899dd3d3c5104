# Exercise 06-predict-events: lists of event class names.
predicted_first = ["Request", "EndOfMessage", "Request", "Data"]
predicted_second = ["Data", "EndOfMessage"]
