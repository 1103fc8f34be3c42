"""Risk grading against SAFETY_REFERENCE.md's table, the risk file, and the live heatmap."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from cloud.audit import AuditLog
from cloud.hazards import HazardGrade, HazardIn, HazardService
from cloud.risk import (
    LiveFactors,
    RiskFileError,
    RiskGrade,
    RiskModel,
    RiskService,
    compute,
    grade_lec,
    grade_matrix,
    lec_score,
    load_risk_file,
    matrix_score,
)
from cloud.storage import Store
from tests.db_support import cloud_db_url

RED, ORANGE, YELLOW, BLUE = RiskGrade.RED, RiskGrade.ORANGE, RiskGrade.YELLOW, RiskGrade.BLUE

# The reference table, row by row: (grade, LEC band, 5x5 band).
# LEC: red > 320, orange 160-320, yellow 70-160, blue < 70.
LEC_CASES = [
    (0.1, BLUE),
    (20, BLUE),
    (69.9, BLUE),
    (70, YELLOW),
    (100, YELLOW),
    (159.9, YELLOW),
    (160, ORANGE),
    (240, ORANGE),
    (320, ORANGE),
    (320.1, RED),
    (400, RED),
    (10 * 10 * 100, RED),
]


@pytest.mark.parametrize(("d", "grade"), LEC_CASES)
def test_lec_grades_follow_the_reference_table(d: float, grade: RiskGrade) -> None:
    assert grade_lec(d) is grade


def test_matrix_grades_follow_the_reference_table_for_every_cell() -> None:
    bands = {RED: range(20, 26), ORANGE: range(10, 17), YELLOW: range(4, 10), BLUE: range(1, 4)}
    for likelihood, severity in itertools.product(range(1, 6), repeat=2):
        r = matrix_score(likelihood, severity)
        expected = next(g for g, band in bands.items() if r in band)
        assert grade_matrix(r) is expected, (likelihood, severity, r)
    assert grade_matrix(25) is RED and grade_matrix(16) is ORANGE and grade_matrix(9) is YELLOW


def test_colours_and_bad_assessments() -> None:
    assert [g.colour for g in RiskGrade] == ["blue", "yellow", "orange", "red"]
    assert lec_score(3, 6, 15) == 270 and grade_lec(270) is ORANGE
    for bad in ((4, 6, 15), (3, 7, 15), (3, 6, 16)):
        with pytest.raises(ValueError, match="LEC"):
            lec_score(*bad)
    for lik, sev in ((0, 3), (6, 1), (True, 2)):
        with pytest.raises(ValueError, match="5x5"):
            matrix_score(lik, sev)
    with pytest.raises(ValueError):
        grade_matrix(26)


RISK_YAML = """\
site: mine-a
areas:
  - id: face-1
    name: Working face 1 / 1号工作面
    polygon: [[0, 0], [40, 0], [40, 10], [0, 10]]
    units:
      - {id: face-1-gas, name: gas, lec: {l: 1, e: 6, c: 7}}       # D = 42: blue
      - {id: face-1-roof, name: roof, matrix: {l: 2, s: 3}}        # R = 6: yellow
  - id: tank-farm
    units:
      - {id: tank-1, matrix: {l: 5, s: 5}}                         # R = 25: red
"""


def test_risk_file_loads_and_bad_files_name_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "mine-a.risk.yaml"
    path.write_text(RISK_YAML, encoding="utf-8")
    model = load_risk_file(path)
    assert model.unit_count == 3 and model.areas[0].polygon[1] == (40, 0)
    bad = tmp_path / "bad.risk.yaml"
    bad.write_text(
        "areas:\n  - id: a\n    units:\n"
        "      - {id: u, lec: {l: 3, e: 6, c: 15}, matrix: {l: 1, s: 1}}\n"
    )
    with pytest.raises(RiskFileError, match=r"bad\.risk\.yaml: areas\.0\.units\.0"):
        load_risk_file(bad)
    bad.write_text("areas:\n  - id: a\n    units:\n      - {id: u, lec: {l: 4, e: 6, c: 15}}\n")
    with pytest.raises(RiskFileError, match="LEC L=4"):
        load_risk_file(bad)
    bad.write_text("areas: [unclosed")
    with pytest.raises(RiskFileError, match=r"bad\.risk\.yaml"):
        load_risk_file(bad)


def test_live_factors_raise_grades_and_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RISK_YAML, encoding="utf-8")
    model = load_risk_file(path)
    quiet = {a.id: a for a in compute(model, LiveFactors())}
    assert quiet["face-1"].grade is YELLOW and quiet["face-1"].contributions == []
    assert quiet["tank-farm"].grade is RED

    live = LiveFactors()
    live.add("face-1", "cut", "face-1.ch4.t1")
    live.add("face-1", "hazard_general", "hazard:7")
    areas = {a.id: a for a in compute(model, live)}
    face = areas["face-1"]
    assert face.points == 2.5 and face.static_grade is YELLOW
    assert {u.id: u.grade for u in face.units} == {"face-1-gas": ORANGE, "face-1-roof": RED}
    assert face.grade is RED  # the highest of its units
    assert [(c.factor, c.detail, c.points) for c in face.contributions] == [
        ("cut", "face-1.ch4.t1", 2.0),
        ("hazard_general", "hazard:7", 0.5),
    ]


def test_risk_service_counts_open_hazards_and_keeps_grade_history(tmp_path: Path) -> None:
    store = Store(cloud_db_url(tmp_path, "r.db"))
    store.create_all()
    audit = AuditLog(store.engine)
    audit.create_all()
    hazards = HazardService(store.engine, audit, tmp_path / "ev")
    hazards.create_all()
    model = RiskModel.model_validate(
        {
            "site": "mine-a",
            "areas": [{"id": "face-1", "units": [{"id": "u", "lec": {"l": 1, "e": 6, "c": 7}}]}],
        }
    )
    risk = RiskService(store.engine, model, store=store, hazards=hazards)
    risk.create_all()
    assert risk.heatmap()[0].grade is BLUE
    hazards.create(HazardIn(title="t", area="face-1", grade=HazardGrade.MAJOR, site="mine-a"), "x")
    face = risk.heatmap()[0]
    assert face.grade is YELLOW and [c.factor for c in face.contributions] == ["hazard_major"]
    risk.heatmap()  # unchanged: no new history row
    history = risk.history("face-1")
    assert [h.grade for h in history] == ["blue", "yellow"]
    assert history[1].contributions[0]["factor"] == "hazard_major"
    again = RiskService(store.engine, model, store=store, hazards=hazards)  # a restart
    again.heatmap()
    assert len(again.history()) == 2
    store.close()
