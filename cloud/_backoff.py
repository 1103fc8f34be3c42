"""Capped, jittered exponential backoff for reconnect loops that run forever."""

from __future__ import annotations

import random


class Backoff:
    """Full-jitter exponential backoff: delay in [initial/2, min(cap, initial * 2**n)].

    ``reset()`` after a success so the next outage starts with a short wait again.
    """

    def __init__(self, initial: float = 0.5, cap: float = 30.0) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError("backoff needs 0 < initial <= cap")
        self._initial = initial
        self._cap = cap
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._initial * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return random.uniform(self._initial / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
