"""Seeded synthetic sensor histories (pure numpy) and loaders for a site's own records.

Generators (grounded in ../shared/standards/SAFETY_REFERENCE.md limits):
:func:`methane`, :func:`roof_separation`, :func:`vibration` /
:func:`vibration_blocks`, :func:`dust`. The same seed gives the same history,
bit for bit. Loaders (:func:`load_csv`, :func:`load_parquet`,
:func:`load_influx`) give a site's records the same :class:`History` shape, so
``safewatch models train`` can learn from either.
"""

from simulators.synthetic._dust import dust
from simulators.synthetic._history import History, HistoryError, data_sha256
from simulators.synthetic._loaders import load_csv, load_influx, load_parquet
from simulators.synthetic._methane import METHANE_ALARM, methane
from simulators.synthetic._roof import ROOF_RED_MM, ROOF_YELLOW_MM, roof_separation
from simulators.synthetic._vibration import (
    VIBRATION_BLOCK,
    VIBRATION_RATE_HZ,
    vibration,
    vibration_blocks,
)

__all__ = [
    "METHANE_ALARM",
    "ROOF_RED_MM",
    "ROOF_YELLOW_MM",
    "VIBRATION_BLOCK",
    "VIBRATION_RATE_HZ",
    "History",
    "HistoryError",
    "data_sha256",
    "dust",
    "load_csv",
    "load_influx",
    "load_parquet",
    "methane",
    "roof_separation",
    "vibration",
    "vibration_blocks",
]
