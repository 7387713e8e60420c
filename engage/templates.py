"""Compatibility name for :mod:`engage.templating` (the code lives there)."""

from .templating import *  # noqa: F403
from .templating import __all__  # noqa: F401
