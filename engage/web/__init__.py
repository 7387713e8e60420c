"""The HTTP side of engage (``engage serve``): the web interface lives in ``engage.web.ui``."""
