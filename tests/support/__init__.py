"""Helpers shared by the tests and benchmarks (tiny models, files in users' formats)."""
