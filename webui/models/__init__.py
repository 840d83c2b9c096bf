"""Checkpoint discovery, loading and caching."""
