"""Inference-time refinement (survey §5): voting, best-of-N and speculative decoding."""
