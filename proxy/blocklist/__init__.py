"""The URL blocklist: its rules, the watcher that hot-reloads them, and the command that edits them.

Theory of operation
-------------------
Three modules, one concern each, so that the pure part can be tested from strings alone:

* :mod:`proxy.blocklist.rules` (pure): ``parse(text)`` gives an immutable
  :class:`~proxy.blocklist.rules.Blocklist`, and ``match`` costs O(labels in the host).
* :mod:`proxy.blocklist.watch`: watchdog glue that re-reads ``blacklist.txt`` on a thread
  whenever it changes and hands each new snapshot to the reactor.
* :mod:`proxy.blocklist.edit`: ``python -m proxy.blocklist add|remove|list|check``, atomic
  edits of the file under a lock.

Importing this package imports only the pure rules; the watcher and the command are imported
by whoever needs them.
"""

from .rules import (
    EMPTY,
    Blocklist,
    Match,
    ParseError,
    Rule,
    canonical_rule,
    normalize_host,
    parse,
    parse_rule,
)

__all__ = [
    "EMPTY",
    "Blocklist",
    "Match",
    "ParseError",
    "Rule",
    "canonical_rule",
    "normalize_host",
    "parse",
    "parse_rule",
]
