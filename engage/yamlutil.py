"""Safe YAML loading that remembers where every key and value came from.

Used for config.yaml and campaign files so that every error can be reported
as ``path:line:col: field: message`` (line and column are 1-based).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import Problem

Loc = tuple[int, int]
Where = dict[tuple[Any, ...], Loc]


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps dates as strings (we parse them ourselves)."""


# Keep timestamps as plain strings: YAML 1.1 turns 2026-01-01 into a date and
# "10:00" style values into sexagesimal ints; both surprise marketers.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:timestamp",)]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _build(node: yaml.Node, path: tuple[Any, ...], where: Where, loader: _Loader) -> Any:
    where[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                )
            if key in out:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            where[(*path, key, "__key__")] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            out[key] = _build(value_node, (*path, key), where, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), where, loader) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(text: str, path: str) -> tuple[Any, Where]:
    """Parse one YAML document safely; raise ValidationFailed-ready Problem on syntax errors."""
    loader = _Loader(text)
    where: Where = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {(): (1, 1)}
        return _build(node, (), where, loader), where
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        msg = exc.problem or str(exc)
        if exc.context:
            msg = f"{exc.context}: {msg}" if exc.problem else exc.context
        raise YamlSyntaxError(Problem(path, line, col, None, f"invalid YAML: {msg}")) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(Problem(path, None, None, None, f"invalid YAML: {exc}")) from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path, display: str | None = None) -> tuple[Any, Where]:
    shown = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlSyntaxError(
            Problem(shown, None, None, None, f"cannot read: {exc.strerror}")
        ) from None
    except UnicodeDecodeError:
        raise YamlSyntaxError(Problem(shown, None, None, None, "not UTF-8 text")) from None
    return load_yaml(text, shown)


class YamlSyntaxError(Exception):
    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def locate(where: Where, loc: tuple[Any, ...], *, key: bool = False) -> Loc | None:
    """Best known (line, col) for a path; falls back to the nearest parent."""
    loc = tuple(loc)
    if key and (*loc, "__key__") in where:
        return where[(*loc, "__key__")]
    while loc:
        if loc in where:
            return where[loc]
        if (*loc, "__key__") in where:
            return where[(*loc, "__key__")]
        loc = loc[:-1]
    return where.get(())


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# Keys that older releases accepted: say what became of them, not just "unknown".
REMOVED_KEYS = {
    "dispatch.helper_process": (
        "removed: dispatch now hides provider latency with dispatch.workers requests in "
        "flight in one process (docs/operations.md); delete this line"
    ),
}


def problems_from_validation(
    exc: ValidationError, path: str, where: Where, prefix: tuple[Any, ...] = ()
) -> list[Problem]:
    """Turn a pydantic ValidationError into located problems."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(
            p
            for p in err["loc"]
            if not (isinstance(p, str) and p.startswith(("function-", "tagged")))
        )
        loc = (*prefix, *loc)
        is_extra = err["type"] == "extra_forbidden"
        line_col = locate(where, loc, key=is_extra)
        msg = err["msg"]
        if is_extra:
            msg = REMOVED_KEYS.get(dotted(loc), "unknown key")
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, ") :]
        elif err["type"] == "missing":
            msg = "required"
        line, col = line_col if line_col else (None, None)
        problems.append(Problem(path, line, col, dotted(loc) or None, msg))
    return problems
