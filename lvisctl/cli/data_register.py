"""``lvisctl data register``: record a run's data once (``data.train`` / ``val`` / ``test_info`` /
``image_root``), so every later command of the run finds it without a path."""

from __future__ import annotations

import typer

from lvisctl.cli._options import ImageRootOption, RunDirOption


def register_command(
    run_dir: RunDirOption,
    train: str | None = typer.Option(
        None, "--train", help="LVIS train json, or a builtin name (lvis_v1_train)."
    ),
    val: str | None = typer.Option(None, "--val", help="LVIS val json, or a builtin name (lvis_v1_val)."),
    test: str | None = typer.Option(
        None, "--test", help="Test-dev image-info json, or a builtin name (lvis_v1_test_dev)."
    ),
    image_root: ImageRootOption = None,
    replace: bool = typer.Option(
        False, "--replace", help="Change data the run already remembers (default: keep it, say so)."
    ),
) -> None:
    """Record the run's data files; later commands (train, tta-infer, visualize, analyze, submit) use them.

    --image-root default: a builtin name's own (e.g. datasets/coco).
    """
    from lvisctl.data.remembered import register_data

    root = str(image_root) if image_root is not None else None
    given = {"train": train, "val": val, "test_info": test, "image_root": root}
    for line in register_data(run_dir, given, replace=replace):
        typer.echo(line)


def add_to(data_app: typer.Typer) -> None:
    data_app.command("register")(register_command)
