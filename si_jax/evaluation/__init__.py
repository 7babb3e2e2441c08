"""Autonomous evaluation (survey §6): accuracy on fresh problems, and (later) monitors."""
