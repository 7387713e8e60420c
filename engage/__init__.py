"""engage: a customer-engagement calendar bot for online shops."""

from .errors import EngageError

__version__ = "0.1.0"

__all__ = ["EngageError", "__version__"]
