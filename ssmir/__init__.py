"""ssmir: image restoration with visual state-space (Mamba-family) models."""

__version__ = "0.1.0"
