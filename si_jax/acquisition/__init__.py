"""Data acquisition (survey §2): environment interaction and synthetic generation."""
