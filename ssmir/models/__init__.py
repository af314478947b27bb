"""Architectures and their registry: ``create(name, **official_args)``, ``list()``."""

from ssmir.models import eamamba, emambair, mambair, mambairv2  # noqa: F401  (register their architectures)
from ssmir.models.registry import create, get, list, register

__all__ = ["create", "get", "list", "register"]
