"""Architectures and their registry: ``create(name, **official_args)``, ``list()``."""

from ssmir.models import eamamba  # noqa: F401  (registers eamamba, eamambasr)
from ssmir.models.registry import create, get, list, register

__all__ = ["create", "get", "list", "register"]
