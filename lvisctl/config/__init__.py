"""Configs: YAML files with ``_base_`` inheritance and dotted command-line overrides.

``configs/base.yaml`` is the schema: it names every key with its default. An experiment file starts
with ``_base_: ../base.yaml`` (or a list of files) and overrides a few keys; ``key.sub=value`` overrides
from the command line come last. A key that the base does not define, a value of the wrong type, a choice
not in ``lvisctl.config.choices.CHOICES`` or a number out of its range (``lvisctl.config.checks.RULES``) is
an error naming the file and the key, raised before anything is loaded, so a typo cannot silently train
the wrong model. ``configs/`` ships inside the package; ``--config`` takes a path or a packaged name.
"""

from lvisctl.config.choices import CHOICES
from lvisctl.config.loader import (
    ALIASES,
    CONFIG_ROOT,
    Config,
    load_config,
    parse_overrides,
    resolve_config_path,
    upgrade_saved_config,
)

__all__ = [
    "ALIASES",
    "CHOICES",
    "CONFIG_ROOT",
    "Config",
    "load_config",
    "parse_overrides",
    "resolve_config_path",
    "upgrade_saved_config",
]
