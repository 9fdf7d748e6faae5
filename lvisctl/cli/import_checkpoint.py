"""``lvisctl import-checkpoint``: a torchvision / mmdet / detectron2 Mask R-CNN file as a stage-1 model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lvisctl.cli._options import ConfigOption, OverridesArgument, OverwriteOption, RunDirOption


def import_checkpoint_command(
    file: Annotated[
        Path,
        typer.Argument(help="Checkpoint file: torchvision .pth, mmdet .pth, detectron2 .pkl/.pth."),
    ],
    run_dir: RunDirOption,
    source: str = typer.Option(
        "auto", "--from", help="Framework of FILE: auto, torchvision, mmdet or detectron2."
    ),
    config: ConfigOption = None,
    input_format: str | None = typer.Option(
        None, "--input-format", help="detectron2 only: BGR (model zoo, default) or RGB input of the weights."
    ),
    stride_in_1x1: bool | None = typer.Option(
        None,
        "--stride-in-1x1/--stride-in-3x3",
        help="detectron2 only: MSRA blocks (stride in the 1x1 conv, model zoo default) or torchvision ones.",
    ),
    overwrite: OverwriteOption = False,
    overrides: OverridesArgument = None,
) -> None:
    """Write FILE as checkpoints/stage1_final.pt of the run, with a mapping report.

    The weights are mapped onto --config (default configs/base.yaml); the overrides are applied after the
    framework's conventions. Target classes: the run's training data, else the 1,203 LVIS v1 categories.
    A classifier trained on the same classes in the same order is kept; otherwise it is re-initialised
    (and the report says so).
    """
    from lvisctl.checkpoint_import import import_checkpoint
    from lvisctl.errors import LvisctlError

    if input_format is not None and input_format.upper() not in ("BGR", "RGB"):
        raise LvisctlError(f"--input-format {input_format}: choose BGR or RGB")
    result = import_checkpoint(
        file,
        run_dir,
        framework=source,
        config=config,
        overrides=overrides or [],
        overwrite=overwrite,
        input_format=input_format,
        stride_in_1x1=stride_in_1x1,
    )
    _print_report(result)
    data_overrides = [o for o in overrides or [] if o.startswith("data.")]
    if data_overrides:  # the run's data, for its later commands (stage 2, tta-infer, ...)
        from lvisctl.config import load_config
        from lvisctl.data.remembered import given_data, remember_data

        given = given_data(load_config(None, data_overrides).data)
        remember_data(run_dir, given, lambda line: typer.echo(line, err=True))


def _print_report(result) -> None:
    from rich.console import Console
    from rich.table import Table

    r = result.report
    console = Console()
    table = Table(title=f"import-checkpoint ({r.framework})", show_header=True)
    for col in ("module group", "loaded", "re-initialised", "unused"):
        table.add_column(col, justify="right" if col != "module group" else "left")
    for name, c in r.groups.items():
        table.add_row(name, str(c["loaded"]), str(c["re-initialised"]), str(c["unused"]))
    console.print(table)
    console.print(f"source classes: {r.classes}; target: {r.target}; classifier {r.classifier}")
    for note in r.notes:
        console.print(f"note: {note}")
    if r.skipped_objects:
        console.print(f"skipped (never called): {', '.join(r.skipped_objects[:8])}")
    conv = " ".join(f"{k}={v}" for k, v in r.overrides.items())
    console.print(f"conventions in the checkpoint's config (pass them to stage-2 configs too): {conv}")
    console.print(f"checkpoint: {result.checkpoint.path}  report: {result.report_path}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("import-checkpoint")(import_checkpoint_command)
