"""Command-line declarations: help text on every option, fixed value sets as choices, unmarked errors,
``lvisctl configs``, and paths relative to the working directory."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from lvisctl.cli.app import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
SNAPSHOT = REPO / "tests" / "fixtures" / "cli_options.json"
WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}  # no wrapped help lines


def _commands(group, prefix: str = ""):
    """Every leaf command as ``("data synth", command)``; sub-apps recursed into (Typer's groups are its
    own vendored click's, not ``click.Group``: recognised by ``list_commands``)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if hasattr(command, "list_commands"):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def _option_table() -> dict[str, list[list]]:
    """Per command, each parameter's name, spellings, default, and whether it is required, repeatable,
    hidden: what a user types and gets, without the help wording."""
    table = {}
    for name, command in _commands(typer.main.get_command(app)):
        rows = []
        for p in command.params:
            spellings = [*p.opts, *getattr(p, "secondary_opts", [])]
            default = p.default if p.default in (None, (), []) else repr(p.default)
            default = None if default in ((), []) else default
            rows.append([p.name, spellings, default, p.required, bool(getattr(p, "multiple", False)),
                         bool(getattr(p, "hidden", False))])  # fmt: skip
        table[name] = rows
    return table


def test_every_command_keeps_its_options():
    """Option names, order, defaults and arity are a user contract; this snapshot changes only on purpose
    (regenerate: python -c 'from tests.unit.test_cli_options import _write_snapshot; _write_snapshot()')."""
    assert _option_table() == json.loads(SNAPSHOT.read_text())


def _write_snapshot() -> None:
    commands = [
        f"  {json.dumps(name)}: [\n" + ",\n".join(f"    {json.dumps(row)}" for row in rows) + "\n  ]"
        for name, rows in _option_table().items()
    ]
    SNAPSHOT.write_text("{\n" + ",\n".join(commands) + "\n}\n")  # one parameter a line: diffs read well


def test_no_command_function_takes_more_than_eight_parameters():
    """Many options: an options dataclass, whose body takes one instance (``cli/_command.py``)."""
    import inspect

    for name, command in _commands(typer.main.get_command(app)):
        function = inspect.unwrap(command.callback)
        body = getattr(function, "body", function)
        assert len(inspect.signature(body).parameters) <= 8, name


@pytest.mark.parametrize(
    ("command", "option", "listed"),
    [
        ("data synth", "--preset", "tiny|demo|val-scale"),
        ("demo", "--preset", "tiny|demo|val-scale"),
        ("evaluate", "--iou-type", "segm|bbox|segm,bbox|bbox,segm"),
        ("evaluate", "--metrics", "|boundary|fixed|boundary,fixed|fixed,boundary"),
    ],
)
def test_fixed_value_options_are_choices_listed_in_help(command, option, listed):
    result = runner.invoke(app, [*command.split(), "--help"], env=WIDE)
    assert result.exit_code == 0 and listed in result.output, result.output
    bad = runner.invoke(app, [*command.split(), option, "nonsense"], env=WIDE)
    assert bad.exit_code == 2 and "'nonsense' is not one of" in bad.output, bad.output


def test_choice_sets_match_the_layers():
    from lvisctl.cli import _options
    from lvisctl.data.synth import PRESETS
    from lvisctl.evaluation.lvis_metrics import IOU_TYPES
    from lvisctl.evaluation.pipeline import EXTRA_METRICS
    from lvisctl.inference.pseudo_labels import MODES, SOURCES

    assert set(_options.SYNTH_PRESETS) == set(PRESETS)
    assert set(_options.IOU_TYPES) == set(IOU_TYPES)
    assert set(_options.EXTRA_METRICS) == set(EXTRA_METRICS)
    assert set(_options.PSEUDO_SOURCES) == set(SOURCES) and set(_options.PSEUDO_MODES) == set(MODES)


def test_pseudolabel_source_is_a_choice():
    result = runner.invoke(app, ["pseudolabel", "--help"], env=WIDE)
    assert result.exit_code == 0 and "lvis|openimages|images" in result.output, result.output
    from lvisctl.cli._options import PSEUDO_SOURCES

    assert "|".join(PSEUDO_SOURCES) in result.output


def test_a_bad_choice_is_refused_by_the_parser(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--preset", "huge", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and not (tmp_path / "d").exists()


def test_error_messages_keep_their_square_brackets(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "--run-dir", tmp_path / "r", "--config", "res[val].yaml")
    assert code == 2
    assert err.startswith("error: res[val].yaml: config file not found"), err
    assert len(err.strip().splitlines()) == 1


def test_configs_list_and_show():
    listed = runner.invoke(app, ["configs", "list"], env=WIDE)
    assert listed.exit_code == 0, listed.output
    assert "stage1/r50_da_eql_rfs" in listed.output and "Table 1, row 4" in listed.output
    assert "stage2/gs_hm_head" in listed.output and "large/_schedule" not in listed.output
    shown = runner.invoke(app, ["configs", "show", "stage2/gs_hm", "solver.max_iter=7"])
    assert shown.exit_code == 0, shown.output
    import yaml

    cfg = yaml.safe_load(shown.output)
    assert cfg["model"]["mask_head"]["level_assign"] == "eq1" and cfg["solver"]["max_iter"] == 7
    assert cfg["model"]["roi_heads"]["cls_loss"] == "bags"
    bad = runner.invoke(app, ["configs", "show", "stage2/nope"])
    assert bad.exit_code != 0


def test_submit_out_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    import lvisctl.evaluation.submission as submission

    seen = {}

    def fake_run_submit(results, image_info, out, **kwargs):
        seen["out"] = out
        raise SystemExit(0)

    monkeypatch.setattr(submission, "run_submit", fake_run_submit)
    monkeypatch.chdir(tmp_path)
    args = ["submit", "r.json", "--image-info", "i.json", "--run-dir", "run1", "--out", "sub.zip"]
    runner.invoke(app, args)
    assert seen["out"] == tmp_path.resolve() / "sub.zip"
