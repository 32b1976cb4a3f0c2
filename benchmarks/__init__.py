"""Benchmarks: measured here, never asserted in tests. Results (JSON, Markdown, PNG) live in benchmarks/results/."""
