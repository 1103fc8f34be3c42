"""Risk (风险分级管控): static LEC / 5x5 assessment of risk units, the four-colour grades,
the live heatmap raised by alarms, faults, offline gateways and open hazards, and the
grade history. A service package: its model (YAML beside the site file), its table
(``risk_grade_history``), its service and its router.
"""

from cloud.risk._api import risk_router
from cloud.risk._grading import RiskGrade, grade_lec, grade_matrix, lec_score, matrix_score
from cloud.risk._model import (
    POINTS,
    AreaRisk,
    Contribution,
    LiveFactors,
    RiskFileError,
    RiskModel,
    UnitRisk,
    compute,
    load_risk_file,
)
from cloud.risk._service import GradeChange, HeatmapSnapshot, RiskService

__all__ = [
    "POINTS",
    "AreaRisk",
    "Contribution",
    "GradeChange",
    "HeatmapSnapshot",
    "LiveFactors",
    "RiskFileError",
    "RiskGrade",
    "RiskModel",
    "RiskService",
    "UnitRisk",
    "compute",
    "grade_lec",
    "grade_matrix",
    "lec_score",
    "load_risk_file",
    "matrix_score",
    "risk_router",
]
