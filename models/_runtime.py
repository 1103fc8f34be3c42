"""Load a model the way the gateway must: verified against its card, one session, batched.

:func:`load_model` refuses (``ModelRefused``, naming the file and what
disagrees) when the ONNX file does not hash to the card's ``sha256``, or its
inputs' names, element types or shapes differ from the card's ``inputs``, or
an output the card reads is missing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from models._card import CardError, ModelCard, OutputSpec, read_card
from models.features import PIPELINE_VERSION, trend_features, vibration_features

__all__ = ["LoadedModel", "ModelRefused", "compute_features", "load_model", "reduce_outputs"]


class ModelRefused(Exception):
    """A model the gateway will not run; the message names the file and the disagreement."""


def compute_features(card: ModelCard, windows: NDArray[np.floating]) -> NDArray[np.float32]:
    """The card's feature pipeline over ``(batch, window)`` raw windows."""
    spec = card.features
    if spec.pipeline == "trend":
        assert spec.period_s is not None
        return trend_features(
            windows, period_s=spec.period_s, spans=spec.spans, rate_unit_s=spec.rate_unit_s
        )
    assert spec.sample_rate_hz is not None
    return vibration_features(windows, sample_rate_hz=spec.sample_rate_hz)


Reducer = Callable[[dict[str, NDArray[np.generic]]], NDArray[np.float64]]
ArrayReducer = Callable[[NDArray[np.generic]], NDArray[np.float64]]


def _reducer(spec: OutputSpec) -> Reducer:
    """One output's reduction, decided once per card (the runner calls it every tick)."""
    source = spec.source
    reduce = _array_reducer(spec)
    return lambda raw: reduce(raw[source])


def _array_reducer(spec: OutputSpec) -> ArrayReducer:
    """The reduction of one output applied to its source array."""
    cols = spec.columns
    pick: Callable[[NDArray[np.generic]], NDArray[np.generic]]
    if spec.reduce == "value":

        def pick(arr: NDArray[np.generic]) -> NDArray[np.generic]:
            return arr[:, 0] if arr.ndim == 2 else arr

    elif spec.reduce == "argmax":

        def pick(arr: NDArray[np.generic]) -> NDArray[np.generic]:
            out: NDArray[np.generic] = arr.argmax(axis=1)  # the method: no dispatch wrapper
            return out

    elif len(cols) == 1:
        col = cols[0]

        def pick(arr: NDArray[np.generic]) -> NDArray[np.generic]:
            return arr[:, col]

    elif cols == tuple(range(cols[0], cols[-1] + 1)):
        lo, hi = cols[0], cols[-1] + 1  # a contiguous run: a slice, not a fancy index

        def pick(arr: NDArray[np.generic]) -> NDArray[np.generic]:
            out: NDArray[np.generic] = np.add.reduce(arr[:, lo:hi], axis=1)  # .sum, unwrapped
            return out

    else:
        index = list(cols)

        def pick(arr: NDArray[np.generic]) -> NDArray[np.generic]:
            return np.asarray(arr[:, index].sum(axis=1))

    if spec.transform == "expm1":
        return lambda arr: np.expm1(pick(arr).astype(np.float64))
    return lambda arr: pick(arr).astype(np.float64)


def reduce_outputs(
    card: ModelCard, raw: dict[str, NDArray[np.generic]]
) -> dict[str, NDArray[np.float64]]:
    """Turn the session's raw outputs into the card's named outputs, one value per row."""
    return {spec.name: _reducer(spec)(raw) for spec in card.outputs}


@dataclass
class LoadedModel:
    """A verified card and its one inference session."""

    card: ModelCard
    path: Path
    session: ort.InferenceSession
    input_name: str
    output_names: list[str]

    def __post_init__(self) -> None:
        # per card output: its name, where its source is in the session's answer, reduction
        self._plan = [
            (spec.name, self.output_names.index(spec.source), _array_reducer(spec))
            for spec in self.card.outputs
        ]
        # The dispatch path (bench inference): onnxruntime's compiled ``run`` directly. The
        # Python ``InferenceSession.run`` around it only re-checks the input names (done
        # once here, at load) and retries other execution providers (CPU only here): a
        # few microseconds per call at batch 1. Falls back to the public method if a
        # future onnxruntime moves it.
        compiled = getattr(self.session, "_sess", None)
        self._compiled_run = getattr(compiled, "run", None)

    def run(self, features: NDArray[np.float32]) -> dict[str, NDArray[np.float64]]:
        """Score ``(batch, n_features)`` rows; the card's outputs, one value per row."""
        feeds = {self.input_name: features}
        if self._compiled_run is not None:
            raw = self._compiled_run(self.output_names, feeds, None)
        else:
            raw = self.session.run(self.output_names, feeds)
        return {name: reduce(raw[index]) for name, index, reduce in self._plan}

    def score(self, windows: NDArray[np.floating]) -> dict[str, NDArray[np.float64]]:
        return self.run(compute_features(self.card, windows))


def _check_inputs(card: ModelCard, session: ort.InferenceSession, onnx_path: Path) -> None:
    inputs = session.get_inputs()
    want = card.inputs
    names = [i.name for i in inputs]
    if names != [t.name for t in want]:
        raise ModelRefused(
            f"{onnx_path}: inputs {names} do not match the card's {[t.name for t in want]}"
        )
    for got, spec in zip(inputs, want, strict=True):
        if got.type != f"tensor({spec.dtype.replace('float32', 'float')})":
            raise ModelRefused(
                f"{onnx_path}: input {got.name!r} is {got.type}, the card says {spec.dtype}"
            )
        shape = [d if isinstance(d, int) else None for d in got.shape]
        if shape != list(spec.shape):
            raise ModelRefused(
                f"{onnx_path}: input {got.name!r} has shape {shape}, "
                f"the card says {list(spec.shape)}"
            )
    outputs = {o.name for o in session.get_outputs()}
    for spec_out in card.outputs:
        if spec_out.source not in outputs:
            raise ModelRefused(
                f"{onnx_path}: no output {spec_out.source!r} (card output {spec_out.name!r}); "
                f"the file has {sorted(outputs)}"
            )


def load_model(
    card_path: str | Path,
    *,
    intra_op_threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> LoadedModel:
    """Read a card, verify its ONNX file, open one session (``intra_op_threads`` threads)."""
    card_path = Path(card_path)
    try:
        card = read_card(card_path)
    except CardError as exc:
        raise ModelRefused(str(exc)) from exc
    if card.features.version != PIPELINE_VERSION:
        raise ModelRefused(
            f"{card_path}: written for feature pipeline version {card.features.version}, "
            f"this gateway has version {PIPELINE_VERSION}; retrain or upgrade"
        )
    onnx_path = card_path.parent / card.file
    # read once: the bytes hashed are the bytes loaded (no swap in between)
    try:
        blob = onnx_path.read_bytes()
    except OSError as exc:
        raise ModelRefused(f"{onnx_path}: cannot read: {exc.strerror}") from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest != card.sha256:
        raise ModelRefused(
            f"{onnx_path}: sha256 {digest} does not match the card's {card.sha256} "
            f"({card_path}); the file was changed or belongs to another card"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(blob, sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise ModelRefused(f"{onnx_path}: onnxruntime cannot load it: {exc}") from exc
    _check_inputs(card, session, onnx_path)
    return LoadedModel(
        card=card,
        path=card_path,
        session=session,
        input_name=card.inputs[0].name,
        output_names=sorted({o.source for o in card.outputs}),
    )
