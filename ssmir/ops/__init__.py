"""Operators: the selective scan and the scan orders that feed it."""

from ssmir.ops.selective_scan import (
    BACKENDS,
    resolve_backend,
    selective_scan,
    selective_scan_numba,
    selective_scan_reference,
    selective_scan_torch,
    selective_scan_triton,
)

__all__ = [
    "BACKENDS",
    "resolve_backend",
    "selective_scan",
    "selective_scan_numba",
    "selective_scan_reference",
    "selective_scan_torch",
    "selective_scan_triton",
]
