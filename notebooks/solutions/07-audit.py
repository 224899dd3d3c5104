# Exercise 07-audit: two graph searches, forwards from the start and backwards from the end.
from collections import defaultdict


def audit(table, initial, final):
    """Return (states `initial` cannot reach, states that cannot reach `final`)."""
    reached, todo = {initial}, [initial]
    while todo:
        for target in table[todo.pop()].values():
            if target not in reached:
                reached.add(target)
                todo.append(target)
    leads_here = defaultdict(set)  # the moves, reversed
    for state, row in table.items():
        for target in row.values():
            leads_here[target].add(state)
    closes, todo = {final}, [final]
    while todo:
        for state in leads_here[todo.pop()]:
            if state not in closes:
                closes.add(state)
                todo.append(state)
    return set(table) - reached, set(table) - closes
