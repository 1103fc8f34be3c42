"""The site file's `inference` section: validated with the rest of the site."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_site

DEMO = Path(__file__).resolve().parents[2] / "firmware_configs" / "sites" / "demo-mine.yaml"


def with_inference(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "site.yaml"
    # the demo site has its own inference section: replace it
    base = DEMO.read_text(encoding="utf-8").split("\ninference:")[0]
    path.write_text(base + section, encoding="utf-8")
    return path


def test_a_valid_inference_section_loads(tmp_path: Path) -> None:
    site = load_site(
        with_inference(
            tmp_path,
            "\ninference:\n  tick_ms: 500\n  assign:\n"
            "    - model: methane-forecast\n      tags: [CH4_1201_T1]\n",
        )
    )
    assert site.config.inference.tick_ms == 500
    assert site.config.inference.intra_op_threads == 1
    assert site.config.inference.assign[0].tags == ("CH4_1201_T1",)


def test_the_demo_site_runs_the_forecast_on_both_face_sensors() -> None:
    inference = load_site(DEMO).config.inference
    assert [(a.model, a.tags) for a in inference.assign] == [
        ("methane-forecast", ("CH4_1201_T1", "CH4_1201_T2"))
    ]


def test_an_unknown_tag_is_named_with_file_line_and_field(tmp_path: Path) -> None:
    path = with_inference(
        tmp_path,
        "\ninference:\n  assign:\n    - model: methane-forecast\n      tags: [CH4_NOPE]\n",
    )
    with pytest.raises(ConfigError) as info:
        load_site(path)
    text = "\n".join(str(i) for i in info.value.issues)
    assert "inference.assign.0.tags.0" in text
    assert "unknown tag 'CH4_NOPE'" in text and "site.yaml:" in text


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    path = with_inference(tmp_path, "\ninference:\n  intra_op_threads: 0\n")
    with pytest.raises(ConfigError, match="intra_op_threads"):
        load_site(path)
