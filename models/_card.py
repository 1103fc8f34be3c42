"""Model cards: what an ONNX file expects, produces, decides, and how well it did.

A card ``<name>.card.yaml`` sits next to ``<name>.onnx``. The gateway refuses
a model whose file does not hash to ``sha256`` or whose ONNX inputs differ
from ``inputs``; training writes the card, never a person.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML

__all__ = [
    "CardError",
    "Decision",
    "FeatureSpec",
    "ModelCard",
    "OutputSpec",
    "TensorSpec",
    "TrainingInfo",
    "file_sha256",
    "read_card",
    "write_card",
]

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class CardError(ValueError):
    """A model card that cannot be read or does not validate; the text names file and field."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One ONNX input; ``None`` in ``shape`` is the batch dimension."""

    name: Name
    shape: tuple[int | None, ...]
    dtype: Literal["float32"] = "float32"


class FeatureSpec(_Frozen):
    """How the gateway turns a sensor's samples into one row of ``inputs``.

    ``trend``: the last ``window`` samples taken every ``period_s``.
    ``vibration``: one waveform block of ``window`` samples at ``sample_rate_hz``.
    """

    pipeline: Literal["trend", "vibration"]
    version: int = Field(ge=1)
    window: int = Field(ge=2)
    period_s: float | None = Field(default=None, gt=0)
    sample_rate_hz: float | None = Field(default=None, gt=0)
    spans: tuple[int, ...] = ()
    rate_unit_s: float = Field(default=60.0, gt=0)
    names: tuple[str, ...]

    @model_validator(mode="after")
    def _complete(self) -> FeatureSpec:
        if self.pipeline == "trend":
            if self.period_s is None or not self.spans:
                raise ValueError("a trend pipeline needs period_s and spans")
            if max(self.spans) > self.window:
                raise ValueError(f"span {max(self.spans)} is longer than window {self.window}")
        if self.pipeline == "vibration" and self.sample_rate_hz is None:
            raise ValueError("a vibration pipeline needs sample_rate_hz")
        return self


class OutputSpec(_Frozen):
    """One published value, taken from ONNX output ``source``.

    ``reduce``: ``value`` takes column 0, ``column_sum`` adds ``columns``
    (e.g. the probabilities of every worn stage), ``argmax`` the class index.
    ``transform: expm1`` undoes a log1p target. The value is published as
    tag ``<sensor tag>.<name>`` of kind ``forecast``.
    """

    name: Name
    source: Name
    reduce: Literal["value", "column_sum", "argmax"] = "value"
    columns: tuple[int, ...] = ()
    transform: Literal["none", "expm1"] = "none"
    unit: str = ""
    meaning: str = ""


class Decision(_Frozen):
    """When an output raises a pre-alarm (advisory: never a cut, never delays one)."""

    output: Name
    direction: Literal["high", "low"]
    threshold: float
    clear: float  # hysteresis: the pre-alarm ends when the output is back past this
    meaning: str = ""

    @model_validator(mode="after")
    def _hysteresis(self) -> Decision:
        if self.direction == "high" and self.clear > self.threshold:
            raise ValueError(f"clear {self.clear} must be <= threshold {self.threshold}")
        if self.direction == "low" and self.clear < self.threshold:
            raise ValueError(f"clear {self.clear} must be >= threshold {self.threshold}")
        return self


class TrainingInfo(_Frozen):
    data: str  # generator and parameters, or the user files
    seed: int
    histories: int
    windows: int
    data_sha256: str
    estimator: str
    params: dict[str, Any] = {}


class ModelCard(_Frozen):
    name: Name
    version: int = Field(ge=1)
    task: str
    sensor_kind: Name  # the profile kind it applies to: ch4, roof_separation, vibration
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int
    inputs: tuple[TensorSpec, ...] = Field(min_length=1, max_length=1)
    features: FeatureSpec
    outputs: tuple[OutputSpec, ...] = Field(min_length=1)
    decision: Decision
    training: TrainingInfo
    metrics: dict[str, float]
    limitations: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        width = self.inputs[0].shape[-1]
        if width != len(self.features.names):
            raise ValueError(
                f"input {self.inputs[0].name!r} has {width} features, "
                f"features.names lists {len(self.features.names)}"
            )
        if self.decision.output not in {o.name for o in self.outputs}:
            raise ValueError(f"decision.output {self.decision.output!r} is not an output")
        return self


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _yaml() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 100
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    return yaml


def write_card(card: ModelCard, path: str | Path) -> None:
    data = card.model_dump(mode="json")
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(f"# model card for {card.file}; written by `safewatch models train`\n")
        _yaml().dump(data, handle)
    tmp.replace(path)


def read_card(path: str | Path) -> ModelCard:
    """Read and validate a card; :class:`CardError` names the file and the field."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as handle:
            data = _yaml().load(handle)
    except OSError as exc:
        raise CardError(f"{path}: cannot read: {exc.strerror}") from exc
    except Exception as exc:  # ruamel raises several unrelated error types
        raise CardError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(card)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise CardError(f"{path}: {problems}") from exc
