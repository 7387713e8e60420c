"""The campaign files as the interface sees them, re-read only when they change.

YAML files stay the source of truth: every page asks for the current load,
which is reused while no file under ``campaigns/`` changed (name, size,
modification time), so a page costs a few ``stat`` calls, not a parse.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ...campaigns.loader import LoadResult, campaign_files, collect_campaigns
from ...config import Config
from .calendar_view import colours

Stamp = tuple[tuple[str, int, int], ...]


class CampaignFiles:
    def __init__(self, config: Config):
        self.config = config
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None
        self._loaded = LoadResult()
        self._palette: dict[str, int] = {}

    def _stamp_now(self) -> Stamp:
        folder = self.config.campaigns_path
        if not folder.is_dir():
            return ()
        out = []
        for p in campaign_files(folder):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((p.name, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def load(self) -> LoadResult:
        stamp = self._stamp_now()
        with self._lock:
            if stamp != self._stamp:
                self._loaded = collect_campaigns(self.config)
                names = [c.name for c in self._loaded.campaigns]
                names += [p.stem for p in self._loaded.failed_files]
                self._palette = colours(names)
                self._stamp = stamp
            return self._loaded

    def palette(self) -> dict[str, int]:
        self.load()
        with self._lock:
            return dict(self._palette)

    def files(self) -> list[Path]:
        folder = self.config.campaigns_path
        return campaign_files(folder) if folder.is_dir() else []
