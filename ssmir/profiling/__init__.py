"""Profiling: parameters, FLOPs, latency and memory (and their growth with resolution), receptive fields."""
