"""Adapters to other ecosystems: spandrel (``ssmir.integrations.spandrel``)."""
