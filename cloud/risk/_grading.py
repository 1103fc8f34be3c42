"""Static risk assessment (LEC and the 5x5 matrix) and the four colour grades.

Thresholds from SAFETY_REFERENCE.md "Risk grades and colours":

| grade   | colour | LEC D = L x E x C | 5x5 R = L x S |
| major   | red    | > 320             | 20-25         |
| higher  | orange | 160-320           | 10-16         |
| general | yellow | 70-160            | 4-9           |
| low     | blue   | < 70              | 1-3           |

The LEC bands share their end points; a boundary value takes the higher band's
lower bound (160 is orange, 70 is yellow) except 320, which the table puts in
orange ("> 320" for red).
"""

from __future__ import annotations

import enum

__all__ = [
    "LEC_C",
    "LEC_E",
    "LEC_L",
    "RiskGrade",
    "grade_lec",
    "grade_matrix",
    "lec_score",
    "matrix_score",
]

# The customary LEC factor values (Graham-Kinney): likelihood, exposure, consequence.
LEC_L: frozenset[float] = frozenset({0.1, 0.2, 0.5, 1, 3, 6, 10})
LEC_E: frozenset[float] = frozenset({0.5, 1, 2, 3, 6, 10})
LEC_C: frozenset[float] = frozenset({1, 3, 7, 15, 40, 100})


class RiskGrade(enum.IntEnum):
    """Ordered: a higher value is a worse grade; ``colour`` names the heatmap colour."""

    BLUE = 1  # low (低)
    YELLOW = 2  # general (一般)
    ORANGE = 3  # higher (较大)
    RED = 4  # major (重大)

    @property
    def colour(self) -> str:
        return self.name.lower()

    @property
    def label(self) -> str:
        return {1: "low", 2: "general", 3: "higher", 4: "major"}[self.value]

    def raised(self, steps: int) -> RiskGrade:
        return RiskGrade(min(RiskGrade.RED, max(RiskGrade.BLUE, self.value + steps)))


def lec_score(likelihood: float, exposure: float, consequence: float) -> float:
    for name, value, allowed in (
        ("L", likelihood, LEC_L),
        ("E", exposure, LEC_E),
        ("C", consequence, LEC_C),
    ):
        if value not in allowed:
            raise ValueError(f"LEC {name}={value} is not one of {sorted(allowed)}")
    return likelihood * exposure * consequence


def grade_lec(d: float) -> RiskGrade:
    if d < 0:
        raise ValueError(f"LEC D={d} is negative")
    if d > 320:
        return RiskGrade.RED
    if d >= 160:
        return RiskGrade.ORANGE
    if d >= 70:
        return RiskGrade.YELLOW
    return RiskGrade.BLUE


def matrix_score(likelihood: int, severity: int) -> int:
    for name, value in (("L", likelihood), ("S", severity)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise ValueError(f"5x5 matrix {name}={value!r} is not an integer 1..5")
    return likelihood * severity


def grade_matrix(r: int) -> RiskGrade:
    if not 1 <= r <= 25:
        raise ValueError(f"5x5 matrix R={r} is outside 1..25")
    if r >= 20:
        return RiskGrade.RED
    if r >= 10:
        return RiskGrade.ORANGE
    if r >= 4:
        return RiskGrade.YELLOW
    return RiskGrade.BLUE
