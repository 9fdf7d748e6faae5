"""``lvisctl data``: make synthetic LVIS, print dataset statistics, validate LVIS files, convert COCO."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lvisctl.cli._command import command
from lvisctl.cli._options import (
    GtOption,
    ImageRootOption,
    OptionalRunDirOption,
    OverwriteOption,
    PresetOption,
    SeedOption,
)
from lvisctl.errors import LvisctlError

data_app = typer.Typer(help="LVIS datasets: synthesize, inspect, validate.", no_args_is_help=True)
console = Console()


def _preset_count(flag: str, what: str) -> Any:
    """A count that overrides the preset's (``--train-images`` and its siblings)."""
    return Annotated[int | None, typer.Option(flag, help=f"{what} (override the preset).")]


NumCategories = _preset_count("--num-categories", "Categories")
TrainImages = _preset_count("--train-images", "Train images")
ValImages = _preset_count("--val-images", "Val images")
TestImages = _preset_count("--test-images", "Test-dev images")
UnlabeledImages = _preset_count("--unlabeled-images", "Unlabeled pool images")


@dataclass(kw_only=True)
class SynthOptions:
    """The options of ``lvisctl data synth``, in ``--help`` order."""

    out: Annotated[
        Path | None, typer.Option("--out", help="Dataset folder to create (default: RUN_DIR/data).")
    ] = None
    preset: PresetOption = "demo"
    seed: SeedOption = 0
    images: Annotated[bool | None, typer.Option("--images/--no-images", help="Write image files.")] = None
    real_categories: Annotated[
        bool | None,
        typer.Option(
            "--real-categories/--synthetic-categories", help="Use names/ids from the real LVIS v1 table."
        ),
    ] = None
    categories_file: Annotated[
        Path | None,
        typer.Option(
            "--categories-file",
            help="Real category table json (default: the LVIS v1 table shipped with lvisctl).",
        ),
    ] = None
    num_categories: NumCategories = None
    train_images: TrainImages = None
    val_images: ValImages = None
    test_images: TestImages = None
    unlabeled_images: UnlabeledImages = None
    image_size: Annotated[int | None, typer.Option("--image-size", help="Square image side in px.")] = None
    run_dir: OptionalRunDirOption = None
    overwrite: OverwriteOption = False


@data_app.command("synth")
@command(SynthOptions)
def synth(o: SynthOptions) -> None:
    """Write a synthetic LVIS v1 dataset: images, train/val jsons, test-dev and unlabeled image-info jsons."""
    from lvisctl.data.synth import SPLITS, generate_synthetic_lvis
    from lvisctl.rundir import RunDir

    # the options are generate_synthetic_lvis's keywords, but for --images (write_images) and where to write
    settings = {f.name: getattr(o, f.name) for f in fields(o) if f.name not in ("out", "run_dir", "images")}
    run = RunDir(o.run_dir) if o.run_dir is not None else None
    with _progress() as progress:
        tasks = {}

        def report(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = progress.add_task(f"{split}", total=total)
            progress.update(tasks[split], completed=done)

        paths = generate_synthetic_lvis(o.out, run=run, write_images=o.images, progress=report, **settings)
    _print_summary(paths, [name for name, *_ in SPLITS])


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def _print_summary(paths: dict[str, Path], splits: list[str]) -> None:
    from lvisctl.data.lvis import load_lvis

    table = Table(title=f"synthetic LVIS in {escape(str(paths['root']))}")
    for col in ("split", "file", "images", "annotations", "categories r/c/f"):
        table.add_column(col)
    for name in splits:
        data = load_lvis(paths[name])
        tags = [c.get("frequency") for c in data.categories.values()]
        rcf = "/".join(str(tags.count(t)) for t in "rcf")
        anns = str(data.num_annotations) if data.has_annotations else "-"
        table.add_row(name, escape(paths[name].name), str(len(data.images)), anns, rcf)
    console.print(table)


@data_app.command("stats")
def stats(
    gt: GtOption = None,
    run_dir: OptionalRunDirOption = None,
    out: Path | None = typer.Option(None, "--out", help="Plot folder (RUN_DIR/plots or GT_DIR/stats)."),
    overwrite: OverwriteOption = False,
    level_scale: float = typer.Option(
        1.0,
        "--level-scale",
        min=0.01,
        help="Image resize factor for the mask-RoI level table (test/train scale over the native size).",
    ),
) -> None:
    """Print the category-frequency and mask/box-area-ratio distributions and save them as PNG plots;
    also how many instances Eq. 1 pools from another FPN level than the box rule."""
    from lvisctl.data.lvis import load_lvis
    from lvisctl.data.stats import dataset_stats, save_plots, stats_tables
    from lvisctl.rundir import RunDir
    from lvisctl.rundir.outputs import refuse_inputs_as_outputs

    run = RunDir(run_dir) if run_dir is not None else None
    if gt is None:
        if run is None:
            raise LvisctlError("data stats: pass --gt FILE or --run-dir DIR")
        gt = run.resolve(run.latest("dataset", split="train"))
    out = out if out is not None else (run.root / "plots" if run is not None else gt.parent / "stats")
    prefix = f"{gt.stem}_"
    targets = [out / f"{prefix}{name}.png" for name in ("category_frequency", "mask_box_ratio")]
    refuse_inputs_as_outputs(targets, [gt])
    for target in targets:  # refuse before the (possibly long) load
        if target.exists() and not overwrite:
            raise LvisctlError(
                f"{target}: already exists; pass --overwrite to replace it or choose another --out"
            )
    with console.status(f"loading {escape(str(gt))}"):
        data = load_lvis(gt)
    result = dataset_stats(data)
    for table in stats_tables(result):
        console.print(table)
    console.print(levels_table(data, level_scale))
    written = save_plots(result, out, prefix=prefix)
    if run is not None:
        for path in written:
            run.register(
                "plot", path, inputs=[gt], meta={"plot": path.stem[len(prefix) :], "source": gt.name}
            )
    console.print("plots: " + ", ".join(str(p) for p in written), markup=False, highlight=False)


def levels_table(data, scale: float):
    """GT instances per FPN level under the box rule and under Eq. 1, and the fraction Eq. 1 moves."""
    from rich.table import Table

    from lvisctl.analysis.levels import LEVEL_NAMES, level_disagreement

    d = level_disagreement(data.annotations(), scale=scale)
    table = Table(
        title=f"Mask RoI levels of GT instances (scale {scale:g}): Eq. 1 moves "
        f"{d['moved']} of {d['instances']} ({100 * d['fraction_moved']:.1f}%)"
    )
    table.add_column("rule")
    for name in LEVEL_NAMES:
        table.add_column(name, justify="right")
    table.add_row("box (FPN)", *[str(d["box_rule"][n]) for n in LEVEL_NAMES])
    table.add_row("Eq. 1", *[str(d["eq1"][n]) for n in LEVEL_NAMES])
    return table


@data_app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="LVIS annotation or image-info json."),
    image_root: ImageRootOption = None,
    check_images: bool | None = typer.Option(
        None,
        "--images/--no-images",
        "--check-images/--no-check-images",
        help="Check the image files: exist, readable header and end marker, size as in the json. "
        "Default: on when the images are reachable (some are found under the image root).",
    ),
    decode: bool = typer.Option(
        False, "--decode", help="Also decode every image's pixels (slow; finds any damaged file)."
    ),
) -> None:
    """Validate an LVIS file (and its images); print a summary, or every problem's count and the first few."""
    from lvisctl.data.lvis import images_reachable, load_lvis

    with console.status(f"validating {escape(str(file))}"):
        data = load_lvis(file, image_root=image_root, check_images=check_images, decode_images=decode)
    checked = decode or (images_reachable(data) if check_images is None else check_images)
    console.print(_validate_table(file, data, checked, decode, skipped=check_images is False))


def _validate_table(file: Path, data, checked: bool, decoded: bool, *, skipped: bool = False) -> Table:
    tags = [c.get("frequency") for c in data.categories.values()]
    root = escape(str(data.image_root))
    # "valid" alone would claim the images too; say what was not looked at (--images makes it an error).
    why = "--no-images" if skipped else f"none found under {root}"
    verdict = "valid" if checked else f"annotations valid; images not checked ({why})"
    table = Table(title=f"{escape(str(file))}: {verdict}")
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_row("kind", "annotations" if data.has_annotations else "image info (no annotations)")
    table.add_row("images", str(len(data.images)))
    table.add_row("annotations", str(data.num_annotations))
    table.add_row("categories (r/c/f)", f"{len(tags)} ({'/'.join(str(tags.count(t)) for t in 'rcf')})")
    neg = sum(len(i.get("neg_category_ids", [])) for i in data.images.values())
    not_ex = sum(len(i.get("not_exhaustive_category_ids", [])) for i in data.images.values())
    table.add_row("neg / not-exhaustive labels", f"{neg} / {not_ex}")
    if checked:
        how = "decoded" if decoded else "headers, end markers and sizes checked"
        status = f"all found under {root} ({how})"
    else:
        status = f"not checked ({why}; --images requires them)"
    table.add_row("image files", status)
    return table


@data_app.command("convert")
def convert(
    src: Path = typer.Argument(..., help="The json to convert (a COCO instances file)."),
    out: Path = typer.Argument(..., help="The LVIS json to write."),
    source_format: str = typer.Option(..., "--from", help="Format of SRC: coco."),
    overwrite: OverwriteOption = False,
) -> None:
    """Convert a COCO instances json to LVIS: empty neg / not-exhaustive lists, r/c/f from image counts
    (1-10 / 11-100 / >100 images), crowd regions as ignore boxes (OUT's .crowd.json, for
    data.pseudo_labels)."""
    from lvisctl.data.convert import convert_coco

    if source_format != "coco":
        raise LvisctlError(f"--from: unknown format {source_format!r} (supported: coco)")
    report = convert_coco(src, out, overwrite=overwrite)
    freq = "/".join(str(report.frequencies.get(t, 0)) for t in "rcf")
    console.print(
        f"wrote {report.out}: {report.images} images, {report.annotations} annotations, "
        f"categories r/c/f {freq}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if report.crowd_out is not None:
        console.print(
            f"wrote {report.crowd_out}: {report.crowd} crowd regions as ignore boxes "
            f"(train with data.pseudo_labels={report.crowd_out})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    from lvisctl.cli.data_register import add_to

    add_to(data_app)
    app.add_typer(data_app, name="data")
