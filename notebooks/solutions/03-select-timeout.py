# Exercise 03-select-timeout: how long may select() sleep?


def select_timeout(
    ready: int, next_deadline: float | None, now: float, cap: float | None
) -> float | None:
    if ready:
        return 0.0  # rule 1: work is waiting, do not sleep
    if next_deadline is not None:
        wait: float | None = max(0.0, next_deadline - now)  # rule 2: an overdue timer is due now
    else:
        wait = None  # rule 3: until a descriptor is ready
    if cap is not None:
        wait = cap if wait is None else min(wait, cap)
    return wait
