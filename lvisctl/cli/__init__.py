"""The ``lvisctl`` command line: one thin Typer module per subcommand over the shared layers."""
