"""Packs the example project (config.yaml, campaigns/, templates/) into the wheel
as ``engage/_examples`` so that ``engage init`` and ``engage demo`` work from a
plain ``pip install``. Everything else lives in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithExamples(build_py):
    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "engage" / "_examples"
        for folder in ("campaigns", "templates"):
            shutil.copytree(HERE / folder, dest / folder, dirs_exist_ok=True)
        shutil.copy2(HERE / "config.yaml", dest / "config.yaml")


setup(cmdclass={"build_py": BuildWithExamples})
