"""Benchmarks, each run as ``safewatch bench NAME``; the last output line is JSON."""
