"""Route modules, one per concern. Each exposes ``routes(ctx) -> list[BaseRoute]``;
``engage.web.app.create_app`` mounts them in order."""
