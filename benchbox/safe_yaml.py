"""Read a suite's YAML with the safe loader, within limits a hostile file cannot get past.

``yaml.safe_load`` runs no code, but it accepts three things that cost a user silently or take
the process down:

- **duplicate keys** (``methods:`` twice, at any level): YAML keeps the last one without a word.
  Every duplicate is a problem naming the key, its YAML path and both lines.
- **alias bombs** ("billion laughs": ``&a [*b, *b, …]`` nine levels deep): aliases share one
  node, so the file is tiny, but whatever walks the constructed data (validation, the manifest's
  JSON) expands it to ~10⁹ nodes. The composed node graph is measured before anything is
  constructed: its *expanded* size (a node counts 1, a scalar also its characters), computed once
  per distinct node, must stay within ``MAX_EXPANDED`` (a suite without aliases measures about
  its file size), and an alias of a node that contains it (a cycle) is refused.
- **deep nesting** (``[[[[…]]]]`` 50,000 levels): PyYAML's composer recurses per level and dies
  with ``RecursionError``. Nesting deeper than ``MAX_DEPTH`` levels (expanded through aliases
  too) is refused; a suite needs about six.

Files larger than ``MAX_BYTES`` are refused before they are parsed. Each refusal is a
``UserError`` (duplicates: a ``SuiteError`` listing each) that names the file and the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import SuiteError, UserError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_EXPANDED", "load_yaml"]

MAX_BYTES = 1 << 20  # 1 MiB; the bundled suites are < 5 KiB
MAX_DEPTH = 64  # nesting levels; a suite uses ~6 (suite > methods > item > params > value)
MAX_EXPANDED = 1_000_000  # expanded nodes + scalar characters


class _Refused(Exception):
    """A limit was hit while composing; carries the line it was hit on."""

    def __init__(self, mark: Any, problem: str):
        super().__init__(problem)
        self.mark = mark
        self.problem = problem


class _Loader(yaml.SafeLoader):
    """The safe loader with a bound on the composer's recursion."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner runs ahead of the composer, and its cost per token grows with the flow
        # depth (PyYAML keeps a possible simple key per level): 50,000 ``[`` cost a second before
        # the composer saw level 65. Refuse at the bracket instead.
        if self.flow_level >= MAX_DEPTH:
            raise _Refused(self.get_mark(), f"nesting deeper than {MAX_DEPTH} levels")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(
                    self.peek_event().start_mark,
                    f"nesting deeper than {MAX_DEPTH} levels",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _where(node: Node) -> str:
    return f"{_line(node)}:{int(node.start_mark.column) + 1}"


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _measure(root: Node, where: str) -> None:
    """Refuse a node graph whose expansion is too large or too deep, or that contains itself.

    Iterative post-order over the distinct nodes, each measured once (memoised by identity), so
    a bomb costs the size of the file, not of its expansion.
    """
    memo: dict[int, tuple[int, int]] = {}  # id -> (expanded size, expanded depth)
    open_: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if closing:
            kids = _children(node)
            own = 1 + (len(node.value) if isinstance(node, ScalarNode) else 0)
            size = own + sum(memo[id(k)][0] for k in kids)
            depth = 1 + max((memo[id(k)][1] for k in kids), default=0)
            open_.discard(key)
            memo[key] = (size, depth)
            if size > MAX_EXPANDED:
                raise UserError(
                    f"{where}:{_line(node)}: the YAML expands to more than {MAX_EXPANDED:,} "
                    f"nodes and characters through its aliases (*name); a suite is small: "
                    f"write the values out, or use fewer aliases"
                )
            if depth > MAX_DEPTH:
                raise UserError(
                    f"{where}:{_line(node)}: the YAML nests deeper than {MAX_DEPTH} levels "
                    f"(through its aliases); flatten it"
                )
            continue
        if key in memo:
            continue
        if key in open_:
            raise UserError(
                f"{where}:{_line(node)}: the YAML refers to itself (an alias inside its own "
                f"anchor); remove the recursive alias"
            )
        open_.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in reversed(_children(node)))


def _key_text(loader: _Loader, node: Node) -> tuple[bool, Any]:
    """(hashable, the key as the constructor will build it) of a mapping key node."""
    if not isinstance(node, ScalarNode):
        return False, None
    value = loader.construct_object(node)
    try:
        hash(value)
    except TypeError:
        return False, None
    return True, value


def _path(parent: str, part: str) -> str:
    return f"{parent}.{part}" if parent else part


def _duplicates(loader: _Loader, root: Node) -> list[str]:
    """``line N: path: duplicate key …`` for every key repeated in one mapping, at any level.

    Keys are compared as constructed (``1`` and ``0x1``, ``true`` and ``yes`` are the same key,
    as they would be in the dict). A merge (``<<: *base``) may override; explicit keys may not.
    """
    problems: list[str] = []
    seen_nodes: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(node.value))
        elif isinstance(node, MappingNode):
            first: dict[Any, Node] = {}
            for key_node, value_node in node.value:
                ok, key = _key_text(loader, key_node)
                shown = key_node.value if isinstance(key_node, ScalarNode) else "?"
                if ok:
                    if key in first:
                        a, b = _where(first[key]), _where(key_node)
                        if a.split(":")[0] != b.split(":")[0]:  # lines differ: lines suffice
                            a, b = a.split(":")[0], b.split(":")[0]
                        problems.append(
                            f"line {_line(key_node)}: {_path(path, str(shown))}: duplicate key "
                            f"{shown!r} (first on line {a}, again on line {b}); YAML would "
                            f"silently keep only the last: keep one"
                        )
                    else:
                        first[key] = key_node
                stack.append((value_node, _path(path, str(shown))))
    problems.sort(key=lambda p: int(p.split(":", 1)[0].removeprefix("line ")))
    return problems


def load_yaml(text: str, where: str) -> Any:
    """The data of one YAML document, checked against the limits above; ``where`` names the file
    in messages. Raises ``UserError`` (duplicates: ``SuiteError``)."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except _Refused as exc:
            mark = exc.mark
            raise UserError(
                f"{where}:{mark.line + 1}:{mark.column + 1}: the YAML nests deeper than "
                f"{MAX_DEPTH} levels; a suite needs a handful: flatten it"
            ) from None
        except RecursionError:  # a limit above should always come first; never a traceback
            raise UserError(f"{where}: the YAML nests too deeply; flatten it") from None
        if node is None:
            return None
        _measure(node, where)
        problems = _duplicates(loader, node)
        if problems:
            raise SuiteError(where, problems)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml_file(p: Path) -> Any:
    """Read ``p`` (UTF-8, at most ``MAX_BYTES``) and load it with ``load_yaml``."""
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise UserError(
                f"{p}: the suite file is {size / 2**20:.1f} MiB; a suite is a small YAML file "
                f"(at most {MAX_BYTES // 2**20} MiB): is this the right file?"
            )
        raw = p.read_bytes()
    except OSError as exc:
        raise UserError(
            f"{p}: cannot read the suite file: {exc.strerror or exc}; check its permissions"
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{p}:{line}: the suite file is not UTF-8 (byte {raw[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    try:
        return load_yaml(text, str(p))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{where}: invalid YAML: {problem}; fix the syntax at that line") from None
