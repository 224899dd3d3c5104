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
* ``.. state-table::`` renders :data:`proxy.session.states.TABLE` grouped by state, and
  ``.. state-diagram::`` draws the same table as an inline SVG with
  :mod:`proxy.session.diagram`, the drawing notebook 07 shows too (no Graphviz needed).
* ``.. stats-example::`` prints ``/stats.json`` as a fresh, never started
  :class:`proxy.app.ProxyServer` builds it, so the fields shown are the fields the code emits.

Nothing here needs a network, a binary or a theme asset.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import json
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


def _session_modules() -> tuple[Any, Any]:
    return (
        importlib.import_module("proxy.session.states"),
        importlib.import_module("proxy.session.diagram"),
    )


class StateTable(SphinxDirective):
    """Render proxy.session.states.TABLE: one row per move, grouped by state."""

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(__file__)  # edits of this extension re-render the page
        states, diagram = _session_modules()
        self.env.note_dependency(inspect.getsourcefile(states))
        drawn, listed = diagram.split_background(states.TABLE)
        background = {(b.trigger, b.target) for b in listed}
        rows = []
        for state, moves in states.TABLE.items():
            shown = [(t, n) for t, n in moves.items() if (t.name, n.name) not in background]
            for i, (trigger, target) in enumerate(shown):
                rows.append(
                    [
                        _literal_para(state.name) if i == 0 else "",
                        _literal_para(trigger.name),
                        _literal_para(target.name),
                        nodes.paragraph(text=trigger.value),
                    ]
                )
            if not moves:
                rows.append([_literal_para(state.name), "", "", nodes.paragraph(text="final")])
        out: list[nodes.Node] = [
            _table(["State", "Trigger", "Next state", "When"], rows, [22, 22, 22, 34])
        ]
        for item in listed:
            para = nodes.paragraph()
            para += nodes.literal(text=item.trigger)
            para += nodes.Text(" → ")
            para += nodes.literal(text=item.target)
            para += nodes.Text(f", from {len(item.sources)} states: ")
            for i, source in enumerate(item.sources):
                if i:
                    para += nodes.Text(", ")
                para += nodes.literal(text=source)
            para += nodes.Text(".")
            out.append(para)
        out.append(
            nodes.paragraph(
                text=f"{len(states.TRANSITIONS)} moves in all, {len(states.SessionState)} states, "
                f"{len(states.Trigger)} triggers."
            )
        )
        return out


class StateDiagram(SphinxDirective):
    """Inline SVG of the session state machine, drawn from the table at build time."""

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(__file__)  # edits of this extension re-render the page
        states, diagram = _session_modules()
        self.env.note_dependency(inspect.getsourcefile(states))
        self.env.note_dependency(inspect.getsourcefile(diagram))
        figure = nodes.container(classes=["state-diagram"])
        figure += nodes.raw("", diagram.svg(), format="html")
        # Non-HTML builders get the moves as text instead.
        text = "\n".join(diagram.edge_lines())
        figure += addnodes.only("", nodes.literal_block(text=text), expr="not html")
        return [figure]


# -- stats -----------------------------------------------------------------------------------------


class StatsExample(SphinxDirective):
    """The JSON of ``/stats.json`` from a fresh proxy that served one request."""

    def run(self) -> list[nodes.Node]:
        self.env.note_dependency(__file__)  # edits of this extension re-render the page
        stats_mod = importlib.import_module("proxy.stats")
        app_mod = importlib.import_module("proxy.app")
        self.env.note_dependency(inspect.getsourcefile(stats_mod))
        self.env.note_dependency(inspect.getsourcefile(app_mod))
        config = importlib.import_module("proxy.config").Config(port=0, watch_blacklist=False)
        # A real (never started) server builds the document, so every key shown is one the
        # code emits: its counters, its cache step and its pool.
        server = app_mod.ProxyServer(config)
        try:
            server.stats = stats_mod.Stats(clock=lambda: 1_800_000_000.0)
            server.stats.opened()
            record = importlib.import_module("proxy.accesslog").AccessRecord
            server.stats.finished(
                record(
                    at=1_800_000_000.0,
                    duration=0.005,
                    client_ip="127.0.0.1",
                    client_port=53412,
                    method="GET",
                    url="http://127.0.0.1:8000/",
                    status=200,
                    bytes_sent=426,
                    bytes_received=78,
                    result="TCP_MISS",
                )
            )
            server.cache_step.misses = 1
            doc = server.stats_document()
        finally:
            server.reactor.close()
            server.resolver.close()
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


__all__ = ["attribute_docstrings", "setup"]


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
