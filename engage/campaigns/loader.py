"""Read ``campaigns/*.yaml`` into Campaign models, reporting every problem at once.

A marketer fixing campaign files wants the whole list of mistakes in one go,
each as ``campaigns/winback.yaml:7:3: audience.quiet_for: not a duration: ...``.
So loading never stops at the first bad file: ``collect_campaigns`` returns
the good campaigns *and* the problems (the daemon keeps running the good
ones), ``load_campaigns`` raises them all as one ``ValidationFailed``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..config import Config, Window
from ..errors import NotFound, Problem, ValidationFailed
from ..yamlutil import Where, YamlSyntaxError, load_yaml_file, locate, problems_from_validation
from .schema import NAME_RE, TEMPLATE_RE, Audience, Campaign, Schedule

SUFFIXES = (".yaml", ".yml")
# Which model a nested key belongs to, to suggest the key that was meant.
_MODELS: dict[str, type[BaseModel]] = {
    "": Campaign,
    "schedule": Schedule,
    "audience": Audience,
    "send_window": Window,
}


@dataclass
class LoadResult:
    """Campaigns that loaded cleanly, and every problem found (sorted by place)."""

    campaigns: list[Campaign] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    failed_files: list[Path] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


@dataclass
class _Parsed:
    path: Path
    shown: str
    campaign: Campaign | None
    problems: list[Problem]
    name: str | None = None
    name_at: tuple[int, int] | None = None


def display_path(path: Path) -> str:
    """``path`` relative to the current directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def campaign_files(directory: Path) -> list[Path]:
    """The campaign files of a folder, sorted; hidden files are ignored."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def _suggest(problem: Problem) -> Problem:
    """Add "did you mean ...?" to an unknown key."""
    if problem.message != "unknown key" or not problem.field:
        return problem
    parent, _, key = problem.field.rpartition(".")
    model = _MODELS.get(parent)
    if model is None:
        return problem
    known = [n for n, f in model.model_fields.items() if not f.exclude]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if not close:
        return problem
    return Problem(
        problem.path,
        problem.line,
        problem.col,
        problem.field,
        f"unknown key (did you mean {close[0]}?)",
    )


def _template_problem(
    config: Config, template: str, shown: str, at: tuple[int, int] | None
) -> Problem | None:
    root = config.templates_path
    if (root / template).is_dir():
        return None
    line, col = at or (None, None)
    if not root.is_dir():
        folder = display_path(root)
        msg = f"unknown template {template!r}: the templates folder {folder} does not exist"
    else:
        known = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
        )
        msg = f"unknown template {template!r}: no folder {display_path(root / template)}"
        if known:
            msg += f" (known: {', '.join(known)})"
    return Problem(shown, line, col, "template", msg)


def _parse(path: Path, config: Config) -> _Parsed:
    shown = display_path(path)
    try:
        data, where = load_yaml_file(path, shown)
    except YamlSyntaxError as exc:
        return _Parsed(path, shown, None, [exc.problem])
    if data is None:
        return _Parsed(path, shown, None, [Problem(shown, 1, 1, None, "empty campaign file")])
    if not isinstance(data, dict):
        msg = "a campaign file must be a mapping (name:, schedule:, audience:, ...)"
        return _Parsed(path, shown, None, [Problem(shown, 1, 1, None, msg)])
    return _validate(path, shown, dict(data), where, config)


def _validate(
    path: Path, shown: str, data: dict[Any, Any], where: Where, config: Config
) -> _Parsed:
    problems: list[Problem] = []
    if "path" in data:  # a model field, but not one a file may set
        line, col = locate(where, ("path",), key=True) or (None, None)
        problems.append(Problem(shown, line, col, "path", "unknown key"))
        del data["path"]
    name_defaulted = "name" not in data
    if name_defaulted:
        data["name"] = path.stem
        name_at: tuple[int, int] | None = (1, 1)
    else:
        name_at = locate(where, ("name",))
    schedule = data.get("schedule")
    if isinstance(schedule, dict) and schedule.get("timezone") is None:
        data["schedule"] = {**schedule, "timezone": config.timezone}
    data["path"] = path

    template = data.get("template")
    if isinstance(template, str) and TEMPLATE_RE.match(template) and ".." not in template:
        problem = _template_problem(config, template, shown, locate(where, ("template",)))
        if problem:
            problems.append(problem)

    campaign: Campaign | None = None
    try:
        campaign = Campaign.model_validate(data)
    except ValidationError as exc:
        for problem in problems_from_validation(exc, shown, where):
            if problem.field == "name" and name_defaulted:
                hint = f"{problem.message} (taken from the file name; rename the file or set name:)"
                problem = Problem(shown, 1, 1, "name", hint)
            problems.append(_suggest(problem))
    name = data["name"] if isinstance(data["name"], str) and NAME_RE.match(data["name"]) else None
    return _Parsed(path, shown, None if problems else campaign, problems, name, name_at)


def load_campaign_file(path: Path, config: Config) -> Campaign:
    """One campaign file (no cross-file checks); raises ValidationFailed."""
    parsed = _parse(Path(path), config)
    if parsed.problems or parsed.campaign is None:
        raise ValidationFailed(_sorted(parsed.problems))
    return parsed.campaign


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.path, p.line or 0, p.col or 0))


def collect_campaigns(config: Config, *, directory: Path | None = None) -> LoadResult:
    """Load every campaign file of the folder; never raises for bad files."""
    folder = Path(directory) if directory is not None else config.campaigns_path
    if not folder.is_dir():
        shown = display_path(folder)
        return LoadResult(problems=[Problem(shown, None, None, None, "campaigns folder not found")])
    parsed = [_parse(p, config) for p in campaign_files(folder)]

    by_name: dict[str, list[_Parsed]] = {}
    for item in parsed:
        if item.name is not None:
            by_name.setdefault(item.name, []).append(item)
    for name, items in by_name.items():
        if len(items) < 2:
            continue
        for item in items:
            others = ", ".join(
                f"{o.shown}:{o.name_at[0]}:{o.name_at[1]}" if o.name_at else o.shown
                for o in items
                if o is not item
            )
            line, col = item.name_at or (None, None)
            item.problems.append(
                Problem(
                    item.shown,
                    line,
                    col,
                    "name",
                    f"duplicate campaign name {name!r} (also in {others})",
                )
            )
            item.campaign = None

    result = LoadResult()
    for item in parsed:
        result.problems.extend(item.problems)
        if item.campaign is not None and not item.problems:
            result.campaigns.append(item.campaign)
        else:
            result.failed_files.append(item.path)
    result.campaigns.sort(key=lambda c: c.name)
    result.problems = _sorted(result.problems)
    return result


def check_campaigns(config: Config, *, directory: Path | None = None) -> list[Problem]:
    """Every problem of every campaign file, without raising (for ``engage validate``)."""
    return collect_campaigns(config, directory=directory).problems


def load_campaigns(config: Config, *, directory: Path | None = None) -> list[Campaign]:
    """All campaigns sorted by name; ValidationFailed lists every problem of every file."""
    result = collect_campaigns(config, directory=directory)
    if result.errors:
        raise ValidationFailed(result.problems)
    return result.campaigns


def find_campaign(campaigns: Sequence[Campaign], name: str) -> Campaign:
    for c in campaigns:
        if c.name == name:
            return c
    names = [c.name for c in campaigns]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(names) or 'none'})"
    raise NotFound(f"no campaign named {name!r}{hint}")


def load_campaign(config: Config, name: str) -> Campaign:
    return find_campaign(load_campaigns(config), name)
