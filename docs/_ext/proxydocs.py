"""Sphinx directives that render reference material from the code itself, so it cannot drift.

Theory of operation
-------------------
Every table here is computed while the docs build, from the same objects the program uses:

* ``.. cli-reference:: proxy.__main__:build_parser`` imports the function, builds the
  :class:`argparse.ArgumentParser` and renders its usage line, one table of options per
  argument group (sub-commands get their own section), and the exact ``--help`` text.
* ``.. config-table::`` lists every field of :class:`proxy.config.Config` with its default, the
  command-line flag that sets it (found by matching the parser's ``dest`` names) and the
  attribute docstring, which is read by parsing ``proxy/config.py`` with :mod:`ast` (the string
  literal right after each field; docstrings of attributes are not kept at run time).
* ``.. state-table::`` renders :data:`proxy.states.TRANSITIONS` grouped by source state, and
  ``.. state-diagram::`` draws the same table as an inline SVG with a small layered layout
  (rank = shortest distance from the initial state), no Graphviz needed.
* ``.. stats-example::`` prints the JSON of a fresh :class:`proxy.stats.Stats` snapshot, so
  the list of ``/stats.json`` fields shown is the list the code emits.

Nothing here needs a network, a binary or a theme asset.
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import html
import importlib
import inspect
import json
import types
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective

# -- helpers -----------------------------------------------------------------------------------


def _import(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def _table(header: list[str], rows: list[list[nodes.Node | str]], widths: list[int]) -> nodes.table:
    """A docutils table; each cell is a node or plain text."""
    table = nodes.table(classes=["generated"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    thead = nodes.thead()
    group += thead
    row = nodes.row()
    for title in header:
        row += nodes.entry("", nodes.paragraph(text=title))
    thead += row
    tbody = nodes.tbody()
    group += tbody
    for cells in rows:
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            if isinstance(cell, nodes.Node):
                entry += cell
            else:
                entry += nodes.paragraph(text=str(cell))
            row += entry
        tbody += row
    return table


def _literal_para(*texts: str) -> nodes.paragraph:
    para = nodes.paragraph()
    for i, text in enumerate(texts):
        if i:
            para += nodes.Text(", ")
        para += nodes.literal(text=text)
    return para


def _human_size(value: int) -> str:
    """``8 MiB`` for byte-like round numbers; empty for counts such as 1024 connections."""
    if value < 8192:
        return ""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size and value % size == 0:
            return f"{value // size} {unit}"
    return ""


# -- CLI ---------------------------------------------------------------------------------------


def _expand_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = dict(vars(action), prog=parser.prog)
    for name in list(params):
        if hasattr(params[name], "__name__"):
            params[name] = params[name].__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return action.help % params


def _default_text(action: argparse.Action) -> str:
    default = action.default
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if default is False else "on"
    if default is None or default == argparse.SUPPRESS or default == []:
        return "—"
    if isinstance(default, frozenset):
        return ",".join(str(v) for v in sorted(default))
    if isinstance(default, int) and _human_size(default):
        return f"{default} ({_human_size(default)})"
    return str(default)


def _option_rows(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> list[list]:
    rows = []
    for action in actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else None)
            names = [f"{opt} {metavar}" if metavar else opt for opt in action.option_strings]
        else:
            names = [action.metavar or action.dest]
        help_text = _expand_help(parser, action)
        rows.append([_literal_para(*names), _default_text(action), help_text])
    return rows


class CliReference(SphinxDirective):
    """Render an argparse parser: usage, option tables per group, sub-commands, full help."""

    required_arguments = 1
    option_spec = {"no-help-text": directives.flag}

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(__file__)  # edits of this extension re-render the page
        factory = _import(self.arguments[0])
        parser: argparse.ArgumentParser = factory()
        self.env.note_dependency(inspect.getsourcefile(inspect.getmodule(factory)))
        return self._render(parser, top=True)

    def _render(self, parser: argparse.ArgumentParser, top: bool) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        out.append(nodes.literal_block(text=parser.format_usage().strip(), language="text"))
        if parser.description and top:
            out.append(nodes.paragraph(text=parser.description))
        for group in parser._action_groups:
            rows = _option_rows(parser, group._group_actions)
            if not rows:
                continue
            title = group.title or "options"
            out.append(nodes.rubric(text=title.capitalize() if top else title))
            out.append(_table(["Option", "Default", "Meaning"], rows, [30, 18, 52]))
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                section = nodes.section(ids=[nodes.make_id(f"{parser.prog} {name}")])
                section += nodes.title(text=f"{name}: {helps.get(name, '')}")
                section.extend(self._render(sub, top=False))
                out.append(section)
        if top and "no-help-text" not in self.options:
            out.append(nodes.rubric(text="As printed by --help"))
            out.append(nodes.literal_block(text=parser.format_help().rstrip(), language="text"))
        return out


# -- configuration -----------------------------------------------------------------------------


def attribute_docstrings(source: str, class_name: str) -> dict[str, str]:
    """Map each annotated field of *class_name* to the string literal that follows it."""
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            body = node.body
            for stmt, after in zip(body, [*body[1:], None], strict=True):
                if (
                    isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                ):
                    docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


class ConfigTable(SphinxDirective):
    """Every field of a dataclass (default ``proxy.config:Config``) with default and flag."""

    optional_arguments = 1
    option_spec = {"parser": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(__file__)  # edits of this extension re-render the page
        spec = self.arguments[0] if self.arguments else "proxy.config:Config"
        cls = _import(spec)
        path = inspect.getsourcefile(cls)
        self.env.note_dependency(path)
        with open(path, encoding="utf-8") as handle:
            docs = attribute_docstrings(handle.read(), cls.__name__)
        flags: dict[str, str] = {}
        parser_spec = self.options.get("parser", "proxy.__main__:build_parser")
        parser = _import(parser_spec)()
        for action in parser._actions:
            if action.option_strings:
                flags[action.dest] = action.option_strings[0]
        flags.setdefault("cache_enabled", "--no-cache")
        instance = cls()
        rows = []
        for field in dataclasses.fields(cls):
            value = getattr(instance, field.name)
            if isinstance(value, frozenset):
                default = "{" + ", ".join(str(v) for v in sorted(value)) + "}"
            elif isinstance(value, bool) or value is None:
                default = repr(value)
            elif isinstance(value, int) and _human_size(value):
                default = f"{value} ({_human_size(value)})"
            else:
                default = repr(value)
            flag = flags.get(field.name)
            rows.append(
                [
                    _literal_para(field.name),
                    nodes.paragraph("", "", nodes.literal(text=default)),
                    _literal_para(flag) if flag else "(not on the command line)",
                    self._parse_inline(docs.get(field.name, "")),
                ]
            )
        return [_table(["Field", "Default", "Flag", "Meaning"], rows, [20, 18, 18, 44])]

    def _parse_inline(self, text: str) -> nodes.Node:
        container = nodes.container()
        self.state.nested_parse(StringList([text], self.get_source_info()[0]), 0, container)
        return container


# -- session states ------------------------------------------------------------------------------


def _states_module() -> Any:
    return importlib.import_module("proxy.states")


def _split_moves(states: Any) -> tuple[list[tuple[Any, str, Any]], dict[str, Any]]:
    """Separate the table's specific moves from the triggers allowed in every live state."""
    table = states.TRANSITIONS
    live = [s for s in states.SessionState if s is not states.SessionState.CLOSED]
    by_trigger: dict[str, set] = collections.defaultdict(set)
    for (state, trigger), target in table.items():
        by_trigger[trigger].add((state, target))
    universal = {}
    for trigger, pairs in by_trigger.items():
        targets = {t for _, t in pairs}
        if {s for s, _ in pairs} >= set(live) and len(targets) == 1:
            universal[trigger] = targets.pop()
    moves = [
        (state, trigger, target)
        for (state, trigger), target in table.items()
        if trigger not in universal
    ]
    return moves, universal


class StateTable(SphinxDirective):
    """Render proxy.states.TRANSITIONS: one row per (state, trigger)."""

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(__file__)  # edits of this extension re-render the page
        states = _states_module()
        self.env.note_dependency(inspect.getsourcefile(states))
        moves, universal = _split_moves(states)
        order = {state: i for i, state in enumerate(states.SessionState)}
        moves.sort(key=lambda m: (order[m[0]], order[m[2]], m[1]))
        rows = []
        previous = None
        for state, trigger, target in moves:
            rows.append(
                [
                    _literal_para(state.name) if state is not previous else "",
                    _literal_para(trigger),
                    _literal_para(target.name),
                ]
            )
            previous = state
        out: list[nodes.Node] = [_table(["State", "Trigger", "Next state"], rows, [34, 30, 36])]
        if universal:
            para = nodes.paragraph(text="In every state except CLOSED, also: ")
            for i, (trigger, target) in enumerate(sorted(universal.items())):
                if i:
                    para += nodes.Text("; ")
                para += nodes.literal(text=trigger)
                para += nodes.Text(" → ")
                para += nodes.literal(text=target.name)
            para += nodes.Text(
                f". {len(states.TRANSITIONS)} entries in all, "
                f"{len(list(states.SessionState))} states, {len(states.triggers())} triggers."
            )
            out.append(para)
        return out


def _ranks(states: Any, moves: list[tuple[Any, str, Any]]) -> dict[Any, int]:
    """Layer the states: longest path from the initial state once cycles are broken.

    A depth-first walk from the initial state (moves in table order) marks the moves that
    close a cycle (back to a state still on the walk's stack); the remaining moves form a
    DAG, and each state's rank is its longest distance along them. The main flow then reads
    top to bottom, and only the moves that loop back (keep-alive, retry, re-check) go up.
    """
    successors: dict[Any, list[Any]] = collections.defaultdict(list)
    for source, _, target in moves:
        if target not in successors[source]:
            successors[source].append(target)
    back: set[tuple[Any, Any]] = set()
    on_stack: set[Any] = set()
    seen: set[Any] = set()

    def walk(state: Any) -> None:
        seen.add(state)
        on_stack.add(state)
        for target in successors[state]:
            if target in on_stack:
                back.add((state, target))
            elif target not in seen:
                walk(target)
        on_stack.discard(state)

    walk(states.INITIAL_STATE)
    rank = {state: 0 for state in states.SessionState}
    for _ in range(len(rank)):  # Bellman-Ford style relaxation; the graph is tiny
        for source, targets in successors.items():
            for target in targets:
                if (source, target) not in back and rank[target] < rank[source] + 1:
                    rank[target] = rank[source] + 1
    return rank


def state_diagram_svg(states: Any) -> str:
    """Draw the transition table as SVG: states in rows by rank, moves as labelled curves."""
    moves, universal = _split_moves(states)
    rank = _ranks(states, moves)
    rows: dict[int, list[Any]] = collections.defaultdict(list)
    for state in states.SessionState:
        rows[rank[state]].append(state)
    box_w, box_h, gap_x, gap_y, margin = 190, 34, 70, 92, 30
    widest = max(len(v) for v in rows.values())
    width = margin * 2 + widest * box_w + (widest - 1) * gap_x + 320
    height = margin * 2 + (max(rows) + 1) * (box_h + gap_y)
    pos: dict[Any, tuple[float, float]] = {}
    for r, members in rows.items():
        total = len(members) * box_w + (len(members) - 1) * gap_x
        x0 = (width - 320 - total) / 2
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
    # Group parallel moves (same source and target) under one curve with stacked labels.
    grouped: dict[tuple[Any, Any], list[str]] = collections.defaultdict(list)
    for source, trigger, target in moves:
        grouped[(source, target)].append(trigger)
    for index, ((source, target), triggers) in enumerate(
        sorted(grouped.items(), key=lambda kv: (rank[kv[0][0]], kv[0][0].name, kv[0][1].name))
    ):
        sx, sy = pos[source]
        tx, ty = pos[target]
        down = rank[target] > rank[source]
        same = rank[target] == rank[source]
        if down:
            x1, y1 = sx + box_w / 2, sy + box_h
            x2, y2 = tx + box_w / 2, ty
            bend = 0.0
        elif same:
            x1, y1 = sx + (box_w if tx > sx else 0), sy + box_h / 2
            x2, y2 = tx + (0 if tx > sx else box_w), ty + box_h / 2
            bend = -40.0
        else:
            # Back edges leave from the right side and sweep out to the right margin.
            x1, y1 = sx + box_w, sy + box_h / 2
            x2, y2 = tx + box_w, ty + box_h / 2
            bend = 0.0
        if down:
            # Spread edges from one source so parallel curves do not overlap.
            siblings = sorted(
                (t for (s, t) in grouped if s is source and rank[t] > rank[s]),
                key=lambda t: pos[t][0],
            )
            k = siblings.index(target)
            x1 += (k - (len(siblings) - 1) / 2) * 28
            mx, my = (x1 + x2) / 2, (y1 + y2) / 2
            path = f"M{x1:.0f},{y1:.0f} C{x1:.0f},{my:.0f} {x2:.0f},{my:.0f} {x2:.0f},{y2:.0f}"
            lx, ly = mx, my
            if abs(rank[target] - rank[source]) > 1:
                lx, ly = x1 + (x2 - x1) * 0.3, y1 + (y2 - y1) * 0.3
        elif same:
            mx = (x1 + x2) / 2
            path = f"M{x1:.0f},{y1:.0f} Q{mx:.0f},{y1 + bend:.0f} {x2:.0f},{y2:.0f}"
            lx, ly = mx, y1 + bend / 2 - 4
        else:
            reach = 60 + 22 * (index % 5) + 18 * (rank[source] - rank[target])
            cx = max(x1, x2) + reach
            path = f"M{x1:.0f},{y1:.0f} C{cx:.0f},{y1:.0f} {cx:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
            lx, ly = cx - reach * 0.25, (y1 + y2) / 2
        color = "#a33" if not down and not same else "#555"
        parts.append(
            f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.2" '
            f'marker-end="url(#arrow)"><title>{html.escape(source.name)} → '
            f"{html.escape(target.name)}: {html.escape(', '.join(triggers))}</title></path>"
        )
        for j, trigger in enumerate(triggers):
            parts.append(
                f'<text x="{lx:.0f}" y="{ly + j * 11:.0f}" font-size="10" fill="{color}" '
                f'text-anchor="middle" paint-order="stroke" stroke="#fff" stroke-width="3">'
                f"{html.escape(trigger)}</text>"
            )
    for state, (x, y) in pos.items():
        fill = "#e8f4ec" if state is states.INITIAL_STATE else "#eef2f8"
        parts.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{box_w}" height="{box_h}" rx="8" '
            f'fill="{fill}" stroke="#345" stroke-width="1.3"/>'
            f'<text x="{x + box_w / 2:.0f}" y="{y + box_h / 2 + 4:.0f}" font-size="12" '
            f'text-anchor="middle" font-family="monospace">{html.escape(state.name)}</text>'
        )
    if universal:
        text = "; ".join(f"{t} → {s.name}" for t, s in sorted(universal.items()))
        parts.append(
            f'<text x="{margin}" y="{height - 8}" font-size="13" fill="#333">'
            f"From every state but CLOSED (not drawn): {html.escape(text)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


class StateDiagram(SphinxDirective):
    """Inline SVG of the session state machine, drawn from TRANSITIONS at build time."""

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(__file__)  # edits of this extension re-render the page
        states = _states_module()
        self.env.note_dependency(inspect.getsourcefile(states))
        svg = state_diagram_svg(states)
        figure = nodes.container(classes=["state-diagram"])
        figure += nodes.raw("", svg, format="html")
        # Non-HTML builders get the edge list as text instead.
        moves, _ = _split_moves(states)
        lines = [f"{s.name} --{t}--> {n.name}" for s, t, n in moves]
        figure += addnodes.only("", nodes.literal_block(text="\n".join(lines)), expr="not html")
        return [figure]


# -- stats -----------------------------------------------------------------------------------------


class _IdlePool:
    """Stands in for an empty :class:`proxy.upstream.UpstreamPool`."""

    reuses = 0

    def __len__(self) -> int:
        return 0


class StatsExample(SphinxDirective):
    """The JSON of a fresh ``Stats().snapshot()``, plus the cache and pool keys added by status."""

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(__file__)  # edits of this extension re-render the page
        stats_mod = importlib.import_module("proxy.stats")
        self.env.note_dependency(inspect.getsourcefile(stats_mod))
        stats = stats_mod.Stats(clock=lambda: 1_800_000_000.0)
        stats.finished(
            stats_mod.RequestRecord(
                at=1_800_000_000.0,
                client="127.0.0.1:53412",
                method="GET",
                url="http://127.0.0.1:8000/",
                status=200,
                bytes_sent=426,
                duration=0.005,
                result="TCP_MISS",
            )
        )
        # Build the document the way proxy.status does, from a real CacheStep and the pool's
        # two counters, so every key shown is one the code emits.
        config = importlib.import_module("proxy.config").Config()
        step = importlib.import_module("proxy.cachestep").CacheStep(
            types.SimpleNamespace(config=config), clock=lambda: 1_800_000_000.0
        )
        step.misses = 1
        ctx = types.SimpleNamespace(stats=stats, cache_step=step, pool=_IdlePool())
        doc = importlib.import_module("proxy.status").stats_document(ctx)
        return [nodes.literal_block(text=json.dumps(doc, indent=1), language="json")]


def setup(app: Any) -> dict[str, Any]:
    """Register the directives."""
    app.add_directive("cli-reference", CliReference)
    app.add_directive("config-table", ConfigTable)
    app.add_directive("state-table", StateTable)
    app.add_directive("state-diagram", StateDiagram)
    app.add_directive("stats-example", StatsExample)
    app.connect("missing-reference", resolve_reexports)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["attribute_docstrings", "state_diagram_svg", "setup"]


# -- re-exported names ---------------------------------------------------------------------------


def _real_name(name: str) -> str | None:
    """Where *name* (``pkg.Thing`` re-exported from ``pkg.mod``) is really defined, if elsewhere."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        owner = obj if inspect.isclass(obj) or inspect.isroutine(obj) else None
        if owner is None or not hasattr(owner, "__qualname__"):
            return None
        real = f"{owner.__module__}.{owner.__qualname__}"
        return real if real != name else None
    return None


def resolve_reexports(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """Resolve ``:class:`proxy.http11.RequestParser``` to ``proxy.http11.parser.RequestParser``.

    Packages re-export names from their modules, and docstrings rightly use the short public
    path; autodoc documents each object once, where it is defined. Relative names are tried
    in the referring module's namespace first (``Reactor`` inside ``minireactor``).
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    module = node.get("py:module")
    candidates = [target] + ([f"{module}.{target}"] if module else [])
    domain = env.get_domain("py")
    for candidate in candidates:
        real = _real_name(candidate)
        if real is None:
            continue
        found = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], real, node, contnode
        )
        if found is not None:
            return found
    return None
