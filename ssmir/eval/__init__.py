"""Evaluation: the padded/tiled inference helper, metrics, benchmark testers."""
