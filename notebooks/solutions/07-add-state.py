# Exercise 07-add-state: a copy of the machine with one more state.
import enum

from IPython.display import SVG, display

from proxy.session import diagram
from proxy.session.states import TABLE, SessionState, Trigger

State = enum.Enum(
    "State",
    {s.name: s.value for s in SessionState} | {"AUTHENTICATING": "checking the credentials"},
)
Event = enum.Enum(
    "Event",
    {t.name: t.value for t in Trigger}
    | {"AUTHENTICATED": "the credentials are right", "AUTH_FAILED": "no or wrong credentials"},
)


def authenticating_table():
    """TABLE over State and Event, with AUTHENTICATING between the request head and the policy."""
    table = {
        State[state.name]: {Event[t.name]: State[n.name] for t, n in row.items()}
        for state, row in TABLE.items()
    }
    for waiting in (State.IDLE, State.READING_HEAD):  # where a whole head arrives
        table[waiting][Event.HEAD_RECEIVED] = State.AUTHENTICATING
    table[State.AUTHENTICATING] = {
        Event.AUTHENTICATED: State.CHECKING_POLICY,
        Event.AUTH_FAILED: State.ANSWERING,  # 407 with Proxy-Authenticate
        Event.CLIENT_GONE: State.CLOSED,  # the hash runs in a thread: the client may leave
        Event.INTERNAL_ERROR: State.CLOSING,
    }
    return table


display(SVG(diagram.svg(authenticating_table(), State.IDLE)))
