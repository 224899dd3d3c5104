"""proxy: a forward HTTP/HTTPS proxy on :mod:`minireactor`.

Per-connection state machines (:mod:`proxy.session`) parse requests with the sans-IO
:mod:`proxy.http11` layer, apply policy (:mod:`proxy.blocklist`), answer from the cache
(:mod:`proxy.cache`), relay to origins (:mod:`proxy.upstream`) or open CONNECT tunnels
(:mod:`proxy.tunnel`). :mod:`proxy.app` wires them to a reactor; ``python -m proxy`` runs it.
"""

__version__ = "0.1.0"
