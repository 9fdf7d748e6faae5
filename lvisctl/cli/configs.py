"""``lvisctl configs``: the packaged configs (``list``) and one resolved config (``show``)."""

from __future__ import annotations

import typer

configs_app = typer.Typer(
    help="The packaged configs (each reproduces a row of the paper's Table 1 or Table 2).",
    no_args_is_help=True,
)


@configs_app.command("list")
def list_command() -> None:
    """List the packaged configs with the paper row each reproduces; pass a name to --config."""
    from rich.console import Console
    from rich.table import Table

    from lvisctl.config import CONFIG_ROOT
    from lvisctl.config.catalog import list_configs

    table = Table(title=f"packaged configs ({CONFIG_ROOT})", title_justify="left")
    # fold, never ellipsize: a name or description cut with "..." is the bug this table had
    table.add_column("name", overflow="fold")
    table.add_column("reproduces", overflow="fold")
    for entry in list_configs():
        table.add_row(entry.name, entry.purpose)
    Console(highlight=False).print(table)


@configs_app.command("show")
def show_command(
    name: str = typer.Argument(..., help="A packaged config name (stage1/r50_da_eql_rfs) or a yaml path."),
    overrides: list[str] | None = typer.Argument(None, help="Config overrides key.sub=value to apply."),
) -> None:
    """Print the resolved config (its _base_ chain, the defaults and the overrides merged) as YAML."""
    import yaml

    from lvisctl.config import load_config, resolve_config_path

    class Dumper(yaml.SafeDumper):
        """Sections as blocks, lists on one line (as the config files write them)."""

    Dumper.add_representer(
        list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
    )
    cfg = load_config(name, overrides or [])
    typer.echo(f"# {resolve_config_path(name)}")
    typer.echo(yaml.dump(cfg.to_dict(), Dumper=Dumper, sort_keys=False, width=110), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(configs_app, name="configs")
