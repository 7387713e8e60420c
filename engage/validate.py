"""The public name for checking a project from code (documented in
docs/campaigns.md): ``engage.validate.validate_project(config)``.

The checks live in ``engage.campaigns.validate``; nothing inside engage
imports this module (the import-linter contract keeps it at the top).
"""

from .campaigns.validate import ValidationReport, validate_path, validate_project

__all__ = ["ValidationReport", "validate_path", "validate_project"]
