"""si_jax: a JAX-native codebase for self-improving language models."""
