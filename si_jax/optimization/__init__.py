"""Model optimization: objectives, optimizers and the shared update step (survey §4)."""
