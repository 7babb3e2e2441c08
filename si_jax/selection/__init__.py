"""Data selection (survey §3): per-example scores, selectors over them, an adaptive selector."""
