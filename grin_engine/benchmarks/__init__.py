"""Benchmarks the field reports: TOFU (tofu.py, DESIGN.md §7)."""
