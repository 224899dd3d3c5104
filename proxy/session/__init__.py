"""The connection wing: one state machine per client connection, and the steps it drives.

Read it in this order:

* :mod:`proxy.session.states`: the states, the triggers and the one table of moves, and the
  :class:`~proxy.session.states.StateMachine` that alone changes a connection's state.
* :mod:`proxy.session.context`: the small interfaces the session and its steps are written
  against (the reactor as a scheduler, the network, the server), so that a fake world drives
  them in tests and notebooks.
* :mod:`proxy.session.client`: :class:`~proxy.session.client.ClientSession`, the conductor.
* The steps, each answering the session with a value or reporting to it through a
  ``Protocol`` of its own module:
  :mod:`proxy.policy` (CHECKING_POLICY), :mod:`proxy.session.cachestep` (the cache states),
  :mod:`proxy.session.dialer` (RESOLVING, CONNECTING), :mod:`proxy.session.exchange`
  (FORWARDING, RELAYING_RESPONSE), :mod:`proxy.tunnel` (TUNNEL_OPEN) and
  :mod:`proxy.session.local` (the proxy's own pages).
* :mod:`proxy.session.diagram`: the state diagram, drawn from the table.

This package module imports nothing itself, so importing one of its modules never drags the
others in.
"""
