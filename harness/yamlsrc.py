"""Load a YAML file and remember where every value came from.

`load_yaml` parses with PyYAML's safe loader and returns a `YamlSource`: the plain data plus a map from
data paths (``("models", 1, "options", "epochs")``) to 1-based line numbers, taken from the composed
node tree. Later validation errors are mapped back through `YamlSource.line_of`, so a user is told the
file, the line and the field of every problem.

Everything that can go wrong with the file itself becomes an `InputError`: unreadable, too large, not
UTF-8, a syntax error, several documents, a duplicate key, an empty document, a top level that is not
a mapping, or an alias bomb (aliases expanding into a huge tree).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.errors import InputError

MAX_BYTES = 1_000_000  # suites are hand-written: anything bigger is a mistake, not a suite
MAX_NODES = 200_000  # bounds alias expansion ("billion laughs") before validation walks the data

PathKey = tuple[Hashable, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class YamlSource:
    """A parsed YAML mapping with the line of every key and sequence item."""

    file: Path
    data: dict[str, Any]
    lines: dict[PathKey, int] = field(repr=False)

    def line_of(self, path: Sequence[Hashable]) -> int | None:
        """Line of `path`, or of its nearest existing parent when it does not exist (a missing key
        is reported at the mapping that should hold it). None only for an empty map."""
        key = tuple(path)
        while True:
            if key in self.lines:
                return self.lines[key]
            if not key:
                return None
            key = key[:-1]

    def error(self, path: Sequence[Hashable], message: str) -> InputError:
        """An InputError for `path` with this file, the path's line and its dotted field name."""
        return InputError(message, file=self.file, line=self.line_of(path), field=format_field(path) or None)


def format_field(path: Iterable[Hashable]) -> str:
    """``("models", 1, "options", "epochs")`` -> ``models[1].options.epochs``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_yaml(path: Path, *, max_bytes: int = MAX_BYTES) -> YamlSource:
    """Read and parse `path`; the top level must be a mapping."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError("file not found", file=path) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=path) from None
    if path.is_dir():
        raise InputError("is a folder, expected a YAML file", file=path)
    if size > max_bytes:
        raise InputError(f"file is too large ({size} bytes, limit {max_bytes})", file=path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=path) from None
    if len(raw) > max_bytes:  # grew between stat and read
        raise InputError(f"file is too large (limit {max_bytes} bytes)", file=path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x})", file=path, line=line) from None
    return parse_yaml(text, path)


def parse_yaml(text: str, file: Path) -> YamlSource:
    """Parse YAML `text` (attributed to `file` in errors); the top level must be a mapping."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            raise _syntax_error(exc, file) from None
        except yaml.YAMLError as exc:
            raise InputError(f"YAML error: {exc}", file=file) from None
        if node is None:
            raise InputError("file is empty: expected a mapping of keys", file=file)
        if not isinstance(node, MappingNode):
            raise InputError(
                f"the top level must be a mapping of keys, found a {_kind(node)}",
                file=file,
                line=node.start_mark.line + 1,
            )
        lines: dict[PathKey, int] = {(): node.start_mark.line + 1}
        _walk(node, (), lines, loader, file, set())
        try:
            data = loader.construct_document(node)
        except yaml.MarkedYAMLError as exc:
            raise _syntax_error(exc, file) from None
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            # e.g. an impossible date (2024-13-40) that the safe loader turns into a datetime
            raise InputError(f"cannot read value: {exc}", file=file) from None
    finally:
        loader.dispose()
    return YamlSource(file=file, data=data, lines=lines)


def _syntax_error(exc: yaml.MarkedYAMLError, file: Path) -> InputError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "invalid YAML"
    if exc.context and exc.problem:
        problem = f"{exc.context}: {exc.problem}"
    if "'\\t'" in problem or "\t" in problem:
        problem += " (YAML indentation must use spaces, not tabs)"
    line = mark.line + 1 if mark is not None else None
    return InputError(f"YAML syntax error: {problem}", file=file, line=line)


def _kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "list"
    if isinstance(node, MappingNode):
        return "mapping"
    return "scalar value"


def _walk(
    node: Node,
    path: PathKey,
    lines: dict[PathKey, int],
    loader: yaml.SafeLoader,
    file: Path,
    active: set[int],
) -> None:
    """Record the line of every key and item under `node`; reject duplicate and unhashable keys."""
    if len(lines) > MAX_NODES:
        raise InputError(f"too many values (over {MAX_NODES}, aliases included)", file=file)
    if id(node) in active:  # a recursive alias (&a [*a]): no line beyond this point matters
        return
    active.add(id(node))
    try:
        if isinstance(node, MappingNode):
            seen: dict[Hashable, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue  # `<<: *defaults` merges keys; their lines stay with the merged mapping
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, ScalarNode):
                    raise InputError(
                        f"a key must be a plain value, found a {_kind(key_node)}",
                        file=file,
                        line=line,
                        field=format_field(path) or None,
                    )
                key = loader.construct_object(key_node)
                if not isinstance(key, Hashable):
                    raise InputError("unusable key", file=file, line=line, field=format_field(path) or None)
                child = (*path, key)
                if key in seen:
                    raise InputError(
                        f"duplicate key {key!r} (first at line {seen[key]})",
                        file=file,
                        line=line,
                        field=format_field(child),
                    )
                seen[key] = line
                lines[child] = line
                _walk(value_node, child, lines, loader, file, active)
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                child = (*path, index)
                lines[child] = item.start_mark.line + 1
                _walk(item, child, lines, loader, file, active)
    finally:
        active.discard(id(node))
