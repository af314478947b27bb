"""Training: config schema, datasets and degradations, schedulers, the Accelerate trainer."""
