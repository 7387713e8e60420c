"""``engage serve``: the HTTP side (SPEC §8, docs/http.md).

``create_app`` is the ASGI application factory
(``uvicorn --factory engage.web:create_app``); ``serve`` runs it under
uvicorn as ``engage serve`` does.
"""

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
