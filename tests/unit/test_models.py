"""The shipped ONNX models: verified against their cards, refused when they disagree,
and held to quality floors on held-out scenarios scored through the real ONNX files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from models import (
    CATALOG,
    MODELS_DIR,
    ModelRefused,
    file_sha256,
    load_model,
    read_card,
)
from safewatch.cli import app
from safewatch.modelwork import TrainSize, train

SHIPPED = sorted(MODELS_DIR.glob("*.card.yaml"))


def test_every_catalog_model_ships_a_card_and_a_small_onnx_file() -> None:
    assert {read_card(p).name for p in SHIPPED} == set(CATALOG)
    for path in SHIPPED:
        card = read_card(path)
        onnx = MODELS_DIR / card.file
        assert onnx.stat().st_size < 4 * 1024 * 1024
        assert file_sha256(onnx) == card.sha256
        assert card.training.data_sha256 and card.metrics


@pytest.mark.parametrize("card_path", SHIPPED, ids=lambda p: p.name)
def test_shipped_model_loads_with_one_intra_op_thread(card_path: Path) -> None:
    model = load_model(card_path)
    assert model.session.get_session_options().intra_op_num_threads == 1
    width = model.card.inputs[0].shape[-1]
    assert isinstance(width, int)
    out = model.run(np.zeros((3, width), dtype=np.float32))
    assert {o.name for o in model.card.outputs} == set(out)
    assert all(v.shape == (3,) for v in out.values())


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    src = MODELS_DIR / "methane-forecast.card.yaml"
    shutil.copy(src, tmp_path / src.name)
    shutil.copy(MODELS_DIR / read_card(src).file, tmp_path / read_card(src).file)
    return tmp_path / src.name


def test_a_changed_onnx_file_is_refused_by_sha256(model_copy: Path) -> None:
    onnx = model_copy.parent / "methane-forecast.onnx"
    blob = bytearray(onnx.read_bytes())
    blob[-1] ^= 0xFF
    onnx.write_bytes(bytes(blob))
    with pytest.raises(ModelRefused, match=r"methane-forecast\.onnx: sha256 .* does not match"):
        load_model(model_copy)


def edit_card(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    yaml = YAML(typ="safe", pure=True)
    data = yaml.load(path.read_text(encoding="utf-8"))
    change(data)
    with path.open("w", encoding="utf-8") as handle:
        yaml.dump(data, handle)


def _rename_input(card: dict[str, Any]) -> None:
    card["inputs"][0]["name"] = "window"


def _widen_input_only(card: dict[str, Any]) -> None:
    card["inputs"][0]["shape"] = [None, 13]


def _newer_pipeline(card: dict[str, Any]) -> None:
    card["features"]["version"] = 2


def _unknown_output(card: dict[str, Any]) -> None:
    card["outputs"][0]["source"] = "probs"


def _widen_consistently(card: dict[str, Any]) -> None:
    """Card and feature names agree with each other, but not with the ONNX graph."""
    card["inputs"][0]["shape"] = [None, 13]
    card["features"]["names"].append("extra")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_rename_input, r"inputs \['features'\] do not match the card's \['window'\]"),
        (_widen_input_only, "has 13 features, features.names lists 12"),
        (_newer_pipeline, "pipeline version 2"),
        (_unknown_output, "no output 'probs'"),
        (_widen_consistently, r"shape \[None, 12\], the card says \[None, 13\]"),
    ],
)
def test_a_card_that_disagrees_with_the_file_is_refused(
    model_copy: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    edit_card(model_copy, change)
    with pytest.raises(ModelRefused, match=message) as info:
        load_model(model_copy)
    assert "methane-forecast" in str(info.value)


def test_missing_file_and_garbage_are_refused_with_the_path(model_copy: Path) -> None:
    onnx = model_copy.parent / "methane-forecast.onnx"
    onnx.write_bytes(b"not an onnx file")
    card = read_card(model_copy)
    model_copy.write_text(
        model_copy.read_text(encoding="utf-8").replace(card.sha256, file_sha256(onnx)),
        encoding="utf-8",
    )
    with pytest.raises(ModelRefused, match="onnxruntime cannot load it"):
        load_model(model_copy)
    onnx.unlink()
    with pytest.raises(ModelRefused, match="cannot read"):
        load_model(model_copy)


def test_models_eval_holds_the_floors_on_held_out_scenarios() -> None:
    """`safewatch models eval --quick`: the real ONNX files on seeds no training run used."""
    result = CliRunner().invoke(app, ["models", "eval", "--quick"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert set(report) == set(CATALOG)
    vib = report["vibration-wear"]
    assert vib["auroc"] >= 0.95
    assert vib["false_alarm_rate"] <= 0.05 and vib["recall"] >= 0.9
    ch4 = report["methane-forecast"]
    assert ch4["buildups"] >= 15
    assert ch4["warned_5min_share"] >= 0.90
    assert ch4["false_alarm_rate"] <= 0.05
    assert ch4["auroc"] >= 0.95
    roof = report["roof-time-to-red"]
    assert roof["failures"] >= 5
    assert roof["warned_24h_share"] >= 0.90
    assert roof["false_alarm_rate"] <= 0.05
    assert roof["auroc"] >= 0.9
    for metrics in report.values():
        for key in ("precision", "recall", "false_alarm_rate", "auroc"):
            assert 0.0 <= metrics[key] <= 1.0


TINY = TrainSize(
    methane_histories=12,
    vibration_blocks=240,
    params={"methane-forecast": {"n_estimators": 15}, "vibration-wear": {"n_estimators": 10}},
)


@pytest.mark.parametrize("name", ["vibration-wear", "methane-forecast"])
def test_training_is_reproducible(tmp_path: Path, name: str) -> None:
    from safewatch.modelwork import HeldOut

    small = HeldOut(methane_histories=6, vibration_blocks=60)
    a = train(name, tmp_path / "a", seed=3, size=TINY, heldout=small)
    b = train(name, tmp_path / "b", seed=3, size=TINY, heldout=small)
    c = train(name, tmp_path / "c", seed=4, size=TINY, heldout=small)
    assert a.metrics == b.metrics
    assert a.training.data_sha256 == b.training.data_sha256 != c.training.data_sha256
    # skl2onnx writes the same bytes for the same trees: the file hash is reproducible too
    assert a.sha256 == b.sha256
    load_model(tmp_path / "a" / f"{name}.card.yaml")


def test_models_install_refuses_a_bad_pair_and_installs_a_good_one(tmp_path: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "gateway-models"
    good = MODELS_DIR / "vibration-wear.card.yaml"
    result = runner.invoke(app, ["models", "install", str(good), "--dir", str(target)])
    assert result.exit_code == 0, result.output
    assert file_sha256(target / "vibration-wear.onnx") == read_card(good).sha256
    load_model(target / "vibration-wear.card.yaml")

    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(good, bad / good.name)
    (bad / "vibration-wear.onnx").write_bytes(b"junk")
    result = runner.invoke(app, ["models", "install", str(bad / good.name), "--dir", str(target)])
    assert result.exit_code == 1
    assert "sha256" in result.output
    assert file_sha256(target / "vibration-wear.onnx") == read_card(good).sha256  # untouched


def test_a_site_history_from_csv_trains_the_forecaster(tmp_path: Path) -> None:
    """A site's own records (irregular timestamps, 5 s polls) resampled to the model's 10 s."""
    from safewatch.modelwork import HeldOut
    from simulators.synthetic import load_csv, methane

    paths = []
    for i in range(6):
        h = methane(7_000 + i, buildup=i % 2 == 0)
        path = tmp_path / f"CH4_{i}.csv"
        t = 1_767_225_600 + np.arange(2 * len(h.values)) * 5.0  # a 5 s poll
        v = np.repeat(h.values, 2)
        path.write_text(
            "time,value\n" + "".join(f"{a},{b}\n" for a, b in zip(t, v, strict=True)),
            encoding="utf-8",
        )
        paths.append(path)
    histories = [load_csv(p, tag=p.stem, kind="ch4") for p in paths]
    card = train(
        "methane-forecast",
        tmp_path / "site-models",
        seed=1,
        size=TrainSize(params={"methane-forecast": {"n_estimators": 10}}),
        histories=histories,
        source="csv: test",
        heldout=HeldOut(methane_histories=4),
    )
    assert card.training.histories == 6 and card.training.data.startswith("csv")
    assert card.training.windows > 100
    load_model(tmp_path / "site-models" / "methane-forecast.card.yaml")


def test_models_train_names_a_bad_csv_and_an_unknown_model(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "nope.csv"
    result = runner.invoke(app, ["models", "train", "methane-forecast", "--csv", str(missing)])
    assert result.exit_code == 1 and "nope.csv: cannot read" in result.output
    result = runner.invoke(app, ["models", "train", "gas-trend"])
    assert result.exit_code == 2 and "unknown model 'gas-trend'" in result.output
