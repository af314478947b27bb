"""Reusable building blocks: norms, channel mixers, resampling, the MHSSM token mixer."""
