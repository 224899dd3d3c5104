# Exercise 10-coalesce: when does the watcher read the file, for events at these times?
def reload_times(events, debounce, max_delay):
    """Reload times for file events at `events` (sorted seconds): a list of floats."""
    reloads = []
    first = last = None  # the current burst: its first and last event
    for at in events:
        if first is not None:
            due = min(last + debounce, first + max_delay)  # quiet enough, or waited enough
            if at >= due:
                reloads.append(due)
                first = None
        if first is None:
            first = at
        last = at
    if first is not None:
        reloads.append(min(last + debounce, first + max_delay))
    return reloads
