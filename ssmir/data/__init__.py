"""Data: image I/O and benchmark dataset definitions."""
