"""``safewatch demo``."""

from __future__ import annotations


def demo() -> None:
    """Start simulator, gateway and cloud locally and play the methane scenario."""
    raise NotImplementedError("safewatch demo is being built")
