"""Time-lapse copies of a trend model for demos and end-to-end tests.

A trend model reads its window at the card's ``period_s`` (10 s for the methane
forecast: a 10-minute window). A demo or a test cannot wait ten minutes for a
window, so :func:`install_timelapse` writes a copy whose card samples faster:
the ONNX file and its sha256 are the shipped ones, only ``features.period_s``
is shorter, and the card's ``limitations`` say so. The model then sees ten
minutes pass in, say, 30 s: a scenario must rise slowly enough in that compressed
time for the forecast to mean anything. Never deploy such a copy to a mine.
"""

from __future__ import annotations

import os
from pathlib import Path

from models import MODELS_DIR, read_card, write_card

__all__ = ["TIMELAPSE_NOTE", "install_timelapse"]

TIMELAPSE_NOTE = "TIME-LAPSE COPY for demos and tests, never for a mine"


def install_timelapse(
    name: str, dest: str | Path, period_s: float, *, source: str | Path = MODELS_DIR
) -> Path:
    """Copy model ``name`` from ``source`` into ``dest`` with ``features.period_s`` set to
    ``period_s`` (ONNX first, then the card, each by atomic rename). Returns the card path.
    Raises ``ValueError`` for a model without a period (waveform models)."""
    src_card = Path(source) / f"{name}.card.yaml"
    card = read_card(src_card)
    original = card.features.period_s
    if original is None:
        raise ValueError(f"{src_card}: {name!r} reads waveform blocks; it has no period to lapse")
    if not period_s > 0:
        raise ValueError(f"time-lapse period must be > 0 s, not {period_s}")
    note = (
        f"{TIMELAPSE_NOTE}: samples every {period_s:g} s instead of {original:g} s, so the model "
        f"sees {original / period_s:g}x faster time. {card.limitations}"
    ).strip()
    lapsed = card.model_copy(
        update={
            "features": card.features.model_copy(update={"period_s": period_s}),
            "limitations": note,
        }
    )
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    blob = (src_card.parent / card.file).read_bytes()
    tmp = target / f".{card.file}.tmp"
    with tmp.open("wb") as handle:
        handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(target / card.file)
    out = target / src_card.name
    write_card(lapsed, out)
    return out
