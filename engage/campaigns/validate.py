"""``engage validate``: every problem of a project, found before anything runs.

One small entry point per layer so other checks can join without touching
the CLI: ``validate_project(config)`` is the list of checks on a loaded
config (add new ones there), ``validate_path`` also reports a config file
that does not load, and counts the campaigns for the summary line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, default_config_path, load_config
from ..errors import ConfigError, Problem, ValidationFailed
from ..templating.renderer import Renderer
from .data import data_problems
from .loader import LoadResult, collect_campaigns, display_path


@dataclass
class ValidationReport:
    problems: list[Problem] = field(default_factory=list)
    campaigns: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """``3 campaigns OK``, ``3 campaigns OK, 1 warning`` or ``2 errors, 1 warning``."""
        parts = []
        if self.errors:
            parts.append(_plural(len(self.errors), "error"))
        else:
            parts.append(f"{_plural(self.campaigns, 'campaign')} OK")
        if self.warnings:
            parts.append(_plural(len(self.warnings), "warning"))
        return ", ".join(parts)

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(p) for p in self.problems]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _folder_problems(config: Config) -> list[Problem]:
    problems = []
    if not config.templates_path.is_dir():
        problems.append(
            Problem(
                display_path(config.templates_path), None, None, None, "templates folder not found"
            )
        )
    return problems


def _check(config: Config) -> tuple[list[Problem], LoadResult]:
    campaigns = collect_campaigns(config)  # reports a missing campaigns folder itself
    problems = [*_folder_problems(config), *campaigns.problems]
    if config.templates_path.is_dir():
        # Renders every template against a sample customer (SPEC §4).
        problems.extend(Renderer(config).check(campaigns.campaigns))
    problems.extend(data_problems(config, campaigns.campaigns))
    return problems, campaigns


def validate_project(config: Config) -> list[Problem]:
    """Every problem of the project described by a loaded config."""
    return _check(config)[0]


def validate_path(config_path: Path | None = None) -> ValidationReport:
    """Load the config (its problems are reported too) and validate the project."""
    try:
        config = load_config(config_path)
    except ValidationFailed as exc:
        return ValidationReport(problems=list(exc.problems))
    except ConfigError as exc:
        shown = str(config_path or default_config_path())
        return ValidationReport(problems=[Problem(shown, None, None, None, str(exc))])
    problems, loaded = _check(config)
    return ValidationReport(problems=problems, campaigns=len(loaded.campaigns))
