"""The command wrapper (``lvisctl/cli/_command.py``): an options dataclass as a command's parameters, the
exit code and once-per-job line of a stopped run, the distributed clean-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from typer.testing import CliRunner

from lvisctl.cli._command import EXIT_INCOMPLETE, Stopped, command, stopped_by_max_chunks
from lvisctl.cli._options import OverwriteOption, RunDirOption


@dataclass(kw_only=True)
class Toy:
    name: Annotated[str, typer.Argument(help="A name.")]
    run_dir: RunDirOption  # required, after an argument: keyword-only fields keep their order
    count: Annotated[int, typer.Option("--count", min=1, help="How many.")] = 2
    overwrite: OverwriteOption = False


def _app(body, **kw) -> typer.Typer:
    app = typer.Typer()
    app.command("toy")(command(Toy, **kw)(body))
    app.command("other")(lambda: None)  # two commands: "toy" is a subcommand, as in lvisctl
    return app


def test_fields_become_the_options_in_order_and_the_body_gets_one_instance(tmp_path):
    seen = []
    app = _app(seen.append)
    result = CliRunner().invoke(app, ["toy", "a", "--run-dir", str(tmp_path), "--count", "3"])
    assert result.exit_code == 0, result.output
    assert seen == [Toy(name="a", run_dir=tmp_path, count=3, overwrite=False)]
    assert isinstance(seen[0].run_dir, Path)
    shown = CliRunner().invoke(app, ["toy", "--help"], env={"COLUMNS": "200"}).output
    assert shown.index("--run-dir") < shown.index("--count") < shown.index("--overwrite")
    assert CliRunner().invoke(app, ["toy", "a"]).exit_code == 2  # --run-dir is required
    assert CliRunner().invoke(app, ["toy", "a", "--run-dir", "r", "--count", "0"]).exit_code == 2


def test_stopped_exits_with_its_code_and_says_it_once_per_job(tmp_path, monkeypatch):
    def body(o: Toy) -> None:
        raise stopped_by_max_chunks(4, 1)

    app = _app(body)
    args = ["toy", "a", "--run-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_INCOMPLETE
    assert "stopped by --max-chunks before all 4 chunks were done (1 were done before this run)" in (
        result.output
    )
    monkeypatch.setenv("RANK", "1")  # another torchrun process: same exit code, no second line
    quiet = CliRunner().invoke(app, args)
    assert quiet.exit_code == EXIT_INCOMPLETE and quiet.output == ""


def test_distributed_commands_leave_the_process_group_even_when_they_fail(tmp_path, monkeypatch):
    import lvisctl.engine.distributed as distributed

    calls = []
    monkeypatch.setattr(distributed, "cleanup_distributed", lambda: calls.append(1))

    def body(o: Toy) -> None:
        raise Stopped("interrupted", 130)

    result = CliRunner().invoke(_app(body, distributed=True), ["toy", "a", "--run-dir", str(tmp_path)])
    assert result.exit_code == 130 and calls == [1]


def test_pseudolabel_image_root_alone_is_still_the_image_folder_with_a_note(tmp_path, capsys):
    from lvisctl.cli.pseudolabel import _images

    assert _images("openimages", None, tmp_path) == tmp_path
    assert "deprecated; use --images" in capsys.readouterr().err
    assert _images("lvis", None, tmp_path) is None  # lvis: the root of the training json's paths
    assert _images("images", tmp_path / "x.json", tmp_path) == tmp_path / "x.json"
    assert capsys.readouterr().err == ""
