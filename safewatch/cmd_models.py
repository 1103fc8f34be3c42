"""``safewatch models train|eval|list|install``: train, score held out, deploy to a gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)

DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="Models directory (default: the shipped models/)."),
]


def _models_dir(given: Path | None) -> Path:
    from models import MODELS_DIR

    return given or MODELS_DIR


@app.command("list")
def list_models(models_dir: DirOpt = None) -> None:
    """The catalog and the cards found in the models directory."""
    from models import CATALOG, CardError, read_card

    folder = _models_dir(models_dir)
    for name, spec in CATALOG.items():
        typer.echo(f"{name}: {spec.task}")
    for path in sorted(folder.glob("*.card.yaml")):
        try:
            card = read_card(path)
        except CardError as exc:
            typer.echo(f"  {path.name}: INVALID: {exc}", err=True)
            continue
        typer.echo(f"  {path.name}: {card.file} sha256 {card.sha256[:12]}... {card.metrics}")


@app.command("train")
def train(
    name: Annotated[str, typer.Argument(help="A catalog model name, or 'all'.")],
    models_dir: DirOpt = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=999, help="Training seed.")] = 1,
    csv: Annotated[
        list[Path] | None,
        typer.Option("--csv", help="Train on a site's history (time,value CSV); repeatable."),
    ] = None,
    influx_url: Annotated[
        str | None, typer.Option("--influx-url", help="Train on tags read from InfluxDB.")
    ] = None,
    influx_db: Annotated[str, typer.Option("--influx-db")] = "safewatch",
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Tag to read from InfluxDB; repeatable.")
    ] = None,
    start: Annotated[str, typer.Option("--start", help="InfluxQL start.")] = "now() - 90d",
) -> None:
    """Train NAME (from seeded synthetic histories unless --csv/--influx-url), export ONNX,
    write the model card; the last line is JSON with the card's metrics."""
    from models import CATALOG
    from safewatch.modelwork import train as run_training
    from simulators.synthetic import HistoryError, load_csv, load_influx

    names = list(CATALOG) if name == "all" else [name]
    for n in names:
        if n not in CATALOG:
            typer.echo(f"unknown model {n!r}; known: {', '.join(CATALOG)}, all", err=True)
            raise typer.Exit(2)
    folder = _models_dir(models_dir)
    results: dict[str, object] = {}
    for n in names:
        spec = CATALOG[n]
        histories = None
        source = ""
        try:
            if csv:
                histories = [load_csv(p, tag=p.stem, kind=spec.sensor_kind) for p in csv]
                source = "csv: " + ", ".join(str(p) for p in csv)
            elif influx_url:
                if not tag:
                    typer.echo("--influx-url needs at least one --tag", err=True)
                    raise typer.Exit(2)
                histories = [
                    load_influx(influx_url, influx_db, kind=spec.sensor_kind, tag=t, start=start)
                    for t in tag
                ]
                source = f"influx {influx_url} db {influx_db}: {', '.join(tag)} since {start}"
        except HistoryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"training {n} (seed {seed}) into {folder} ...")
        try:
            card = run_training(n, folder, seed=seed, histories=histories, source=source)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"  {card.file}: sha256 {card.sha256}")
        results[n] = {"sha256": card.sha256, **card.metrics}
    typer.echo(json.dumps(results, sort_keys=True))


@app.command("eval")
def evaluate(
    models_dir: DirOpt = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="The small held-out sets the tests use.")
    ] = False,
) -> None:
    """Score every model on held-out synthetic scenarios through its ONNX file; the last
    line is JSON, one entry per model (precision, recall, false_alarm_rate, auroc, lead time)."""
    from models import ModelRefused
    from safewatch.modelwork import QUICK_HELD_OUT, HeldOut
    from safewatch.modelwork import evaluate as run_eval

    try:
        results = run_eval(_models_dir(models_dir), QUICK_HELD_OUT if quick else HeldOut())
    except ModelRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    for name, metrics in results.items():
        typer.echo(f"{name}: " + ", ".join(f"{k}={v:g}" for k, v in sorted(metrics.items())))
    typer.echo(json.dumps(results, sort_keys=True))


@app.command("install")
def install(
    card: Annotated[Path, typer.Argument(help="The new model's card (<name>.card.yaml).")],
    models_dir: Annotated[Path, typer.Option("--dir", help="The gateway's models directory.")],
) -> None:
    """Verify a card and its ONNX file, then copy them into a running gateway's models
    directory (ONNX first, card last, each by atomic rename); the gateway swaps it in."""
    from edge.inference import install as install_model
    from models import ModelRefused

    try:
        path = install_model(card, models_dir)
    except ModelRefused as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"installed {path}; a running gateway swaps it in within about 10 s")
