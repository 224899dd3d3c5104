"""The state diagram, drawn from the table itself: one SVG for the docs and for notebook 07.

Theory of operation
-------------------
A picture drawn by hand drifts from the code the day someone adds a state. This module draws
it from :data:`proxy.session.states.TABLE` (or any table of the same shape, so a student who
adds a state to a copy sees the picture change) with a small layered layout and no Graphviz:

1. **Background moves.** A trigger that leads to the same state from most states (a lost
   client, a bug) would draw an arrow out of every box. Such a trigger is listed under the
   picture with the states it applies to, instead of being drawn.
2. **Back edges.** A depth-first walk from the initial state marks the moves that return to a
   state still on the walk's stack (the keep-alive loop, a retry, a re-check after waiting).
3. **Ranks.** Without the back edges the moves form a DAG; each state's row is its longest
   distance from the initial state along it, so the main flow reads top to bottom and only
   the loops go up (drawn in red, out to the right margin).

The output is plain SVG text (:func:`svg`); :func:`edge_lines` gives the same moves as text for
builders that cannot show a picture.
"""

from __future__ import annotations

import collections
import html
from collections.abc import Hashable, Mapping
from typing import NamedTuple, Protocol, TypeVar

from .states import INITIAL_STATE, TABLE


class Named(Hashable, Protocol):
    """A state or trigger: anything hashable with a ``name``, as enum members are."""

    @property
    def name(self) -> str:
        """How it is written in the picture."""
        ...


S = TypeVar("S", bound=Named)
T = TypeVar("T", bound=Named)


class Background(NamedTuple):
    """A trigger listed instead of drawn: where it leads, and from which states."""

    trigger: str
    target: str
    sources: tuple[str, ...]


def moves_of(table: Mapping[S, Mapping[T, S]]) -> list[tuple[S, T, S]]:
    """Every move of *table*, in table order."""
    return [
        (state, trigger, target) for state, row in table.items() for trigger, target in row.items()
    ]


def split_background(
    table: Mapping[S, Mapping[T, S]], share: float = 0.5
) -> tuple[list[tuple[S, T, S]], list[Background]]:
    """Separate the moves to draw from the triggers that lead to one state from most states."""
    moves = moves_of(table)
    by_trigger: dict[tuple[T, S], list[S]] = collections.defaultdict(list)
    for source, trigger, target in moves:
        by_trigger[(trigger, target)].append(source)
    background = {
        key: sources for key, sources in by_trigger.items() if len(sources) >= share * len(table)
    }
    drawn = [move for move in moves if (move[1], move[2]) not in background]
    listed = [
        Background(trigger.name, target.name, tuple(s.name for s in sources))
        for (trigger, target), sources in background.items()
    ]
    return drawn, listed


def ranks(
    moves: list[tuple[S, T, S]], states: list[S], initial: S
) -> tuple[dict[S, int], set[tuple[S, S]]]:
    """Each state's row (longest path from *initial* once loops are cut) and the loop edges."""
    successors: dict[S, list[S]] = collections.defaultdict(list)
    for source, _, target in moves:
        if target not in successors[source]:
            successors[source].append(target)
    back: set[tuple[S, S]] = set()
    on_stack: set[S] = set()
    seen: set[S] = set()

    def walk(state: S) -> None:
        seen.add(state)
        on_stack.add(state)
        for target in successors[state]:
            if target in on_stack:
                back.add((state, target))
            elif target not in seen:
                walk(target)
        on_stack.discard(state)

    walk(initial)
    rank = dict.fromkeys(states, 0)
    for _ in range(len(rank)):  # relax until stable; the graph is tiny
        for source, targets in successors.items():
            for target in targets:
                if (source, target) not in back and rank[target] < rank[source] + 1:
                    rank[target] = rank[source] + 1
    return rank, back


def edge_lines(table: Mapping[S, Mapping[T, S]] | None = None) -> list[str]:
    """The drawn moves as ``SOURCE --TRIGGER--> TARGET`` lines, then the background ones.

    *table* defaults to the session's :data:`~proxy.session.states.TABLE`.
    """
    if table is None:
        return edge_lines(TABLE)
    drawn, listed = split_background(table)
    lines = [f"{s.name} --{t.name}--> {n.name}" for s, t, n in drawn]
    lines += [f"{b.trigger} --> {b.target} from {', '.join(b.sources)}" for b in listed]
    return lines


def svg(table: Mapping[S, Mapping[T, S]] | None = None, initial: S | None = None) -> str:
    """Draw *table* as SVG: states in rows by rank, moves as labelled curves.

    *table* defaults to the session's :data:`~proxy.session.states.TABLE`; *initial* to its
    first state.
    """
    if table is None:
        return svg(TABLE, INITIAL_STATE)
    if initial is None:
        initial = next(iter(table))
    drawn, listed = split_background(table)
    states = list(table)
    rank, back = ranks(drawn, states, initial)
    rows: dict[int, list[S]] = collections.defaultdict(list)
    for state in states:
        rows[rank[state]].append(state)
    box_w, box_h, gap_x, gap_y, margin, right = 190, 34, 70, 92, 30, 320
    widest = max(len(members) for members in rows.values())
    width = margin * 2 + widest * box_w + (widest - 1) * gap_x + right
    caption = _caption_lines(listed, len(states), (width - 2 * margin) // 8)
    caption_h = 18 * len(caption) + 10
    height = margin * 2 + (max(rows) + 1) * (box_h + gap_y) + caption_h
    pos: dict[S, tuple[float, float]] = {}
    for r, members in rows.items():
        total = len(members) * box_w + (len(members) - 1) * gap_x
        x0 = (width - right - total) / 2
        for i, state in enumerate(members):
            pos[state] = (x0 + i * (box_w + gap_x), margin + r * (box_h + gap_y))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="100%" role="img" aria-label="Session state diagram" '
        f'style="max-width:{width}px;font-family:sans-serif">',
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' "
        "markerHeight='7' orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' "
        "fill='#555'/></marker></defs>",
    ]
    # Parallel moves (same source and target) share one curve, with their labels stacked.
    grouped: dict[tuple[S, S], list[str]] = collections.defaultdict(list)
    for source, trigger, target in drawn:
        grouped[(source, target)].append(trigger.name)
    ordered = sorted(grouped.items(), key=lambda kv: (rank[kv[0][0]], kv[0][0].name, kv[0][1].name))
    for index, ((source, target), triggers) in enumerate(ordered):
        sx, sy = pos[source]
        tx, ty = pos[target]
        loop = (source, target) in back or rank[target] < rank[source]
        same = rank[target] == rank[source] and not loop
        if same:
            x1, y1 = sx + (box_w if tx > sx else 0), sy + box_h / 2
            x2, y2 = tx + (0 if tx > sx else box_w), ty + box_h / 2
            mx = (x1 + x2) / 2
            path = f"M{x1:.0f},{y1:.0f} Q{mx:.0f},{y1 - 40:.0f} {x2:.0f},{y2:.0f}"
            lx, ly = mx, y1 - 24
        elif loop:
            # Loops leave from the right side and sweep out to the right margin.
            x1, y1 = sx + box_w, sy + box_h / 2
            x2, y2 = tx + box_w, ty + box_h / 2
            reach = 60 + 22 * (index % 5) + 18 * abs(rank[source] - rank[target])
            cx = max(x1, x2) + reach
            path = f"M{x1:.0f},{y1:.0f} C{cx:.0f},{y1:.0f} {cx:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
            lx, ly = cx - reach * 0.25, (y1 + y2) / 2
        else:
            x1, y1 = sx + box_w / 2, sy + box_h
            x2, y2 = tx + box_w / 2, ty
            # Spread the moves out of one state so that their curves do not overlap.
            siblings = sorted(
                (t for (s, t) in grouped if s is source and rank[t] > rank[s]),
                key=lambda t: pos[t][0],
            )
            k = siblings.index(target)
            x1 += (k - (len(siblings) - 1) / 2) * 28
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            path = f"M{x1:.0f},{y1:.0f} C{x1:.0f},{my:.0f} {x2:.0f},{my:.0f} {x2:.0f},{y2:.0f}"
            lx, ly = mx, my
            if rank[target] - rank[source] > 1:
                lx, ly = x1 + (x2 - x1) * 0.3, y1 + (y2 - y1) * 0.3
        color = "#a33" if loop else "#555"
        title = f"{source.name} → {target.name}: {', '.join(triggers)}"
        parts.append(
            f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.2" '
            f'marker-end="url(#arrow)"><title>{html.escape(title)}</title></path>'
        )
        for j, trigger_name in enumerate(triggers):
            parts.append(
                f'<text x="{lx:.0f}" y="{ly + j * 11:.0f}" font-size="10" fill="{color}" '
                f'text-anchor="middle" paint-order="stroke" stroke="#fff" stroke-width="3">'
                f"{html.escape(trigger_name)}</text>"
            )
    for state, (x, y) in pos.items():
        fill = "#e8f4ec" if state == initial else "#eef2f8"
        parts.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" height="{box_h}" rx="8" '
            f'fill="{fill}" stroke="#345" stroke-width="1.3"/>'
            f'<text x="{x + box_w / 2:.0f}" y="{y + box_h / 2 + 4:.0f}" font-size="12" '
            f'text-anchor="middle" font-family="monospace">{html.escape(state.name)}</text>'
        )
    y = height - caption_h + 8
    for line in caption:
        parts.append(
            f'<text x="{margin}" y="{y:.0f}" font-size="12" fill="#333">{html.escape(line)}</text>'
        )
        y += 18
    parts.append("</svg>")
    return "\n".join(parts)


def _caption_lines(listed: list[Background], state_count: int, columns: int) -> list[str]:
    """The background moves as text, wrapped to about *columns* characters."""
    lines: list[str] = []
    for item in listed:
        everywhere = len(item.sources) == state_count - 1
        words = f"{item.trigger} → {item.target} (not drawn) from: " + (
            "every other state" if everywhere else ", ".join(item.sources)
        )
        line = ""
        for word in words.split(" "):
            if line and len(line) + 1 + len(word) > columns:
                lines.append(line)
                line = "    " + word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return lines
