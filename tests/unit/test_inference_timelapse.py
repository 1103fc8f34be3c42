"""Time-lapse model copies (demo, end-to-end tests) and `edge run --models-dir`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.inference import TIMELAPSE_NOTE, install_timelapse
from models import MODELS_DIR, load_model, read_card
from safewatch.cli import app

DEMO = Path(__file__).resolve().parents[2] / "firmware_configs" / "sites" / "demo-mine.yaml"


def test_a_timelapse_copy_keeps_the_onnx_file_and_only_shortens_the_period(
    tmp_path: Path,
) -> None:
    card_path = install_timelapse("methane-forecast", tmp_path, 0.5)
    shipped = read_card(MODELS_DIR / "methane-forecast.card.yaml")
    lapsed = load_model(card_path).card  # verified: sha256, inputs
    assert lapsed.sha256 == shipped.sha256 and lapsed.features.period_s == 0.5
    assert lapsed.features.model_copy(update={"period_s": shipped.features.period_s}) == (
        shipped.features
    )
    assert lapsed.limitations.startswith(TIMELAPSE_NOTE) and "20x faster" in lapsed.limitations


def test_a_waveform_model_has_no_period_to_lapse(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="waveform blocks"):
        install_timelapse("vibration-wear", tmp_path, 0.5)
    with pytest.raises(ValueError, match="must be > 0"):
        install_timelapse("methane-forecast", tmp_path, 0.0)


def test_edge_run_names_a_missing_model_in_models_dir(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    result = CliRunner().invoke(
        app,
        ["edge", "run", "--config", str(DEMO), "--buffer", str(tmp_path / "b.db"),
         "--models-dir", str(empty)],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "demo-mine.yaml" in result.output and "no model 'methane-forecast'" in result.output
    assert "configuration rejected" in result.output
