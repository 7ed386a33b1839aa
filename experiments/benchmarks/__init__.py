"""Benchmarks: scripts that time code paths side by side and save JSON and figures (never timed tests)."""
