"""Drive the installed ``engage`` console script (the one users run), not ``python -m``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ENGAGE = shutil.which("engage", path=str(Path(sys.executable).parent)) or "engage"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any ENGAGE_/provider variable of the caller, plus ``extra``."""
    prefixes = ("ENGAGE_", "SENDGRID_", "TWILIO_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


def engage(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    code: int | None = 0,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``engage ARGS``; check the exit status and that no traceback was printed."""
    proc = subprocess.run(
        [ENGAGE, *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    shown = f"engage {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    if code is not None:
        assert proc.returncode == code, shown
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, shown
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line a failed command printed on stderr."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]
