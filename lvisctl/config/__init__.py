"""Configs: YAML files with ``_base_`` inheritance and dotted command-line overrides.

``configs/base.yaml`` is the schema: it names every key with its default. An experiment file starts
with ``_base_: ../base.yaml`` (or a list of files) and overrides a few keys; ``key.sub=value`` overrides
from the command line come last. A key that the base does not define, or a value of the wrong type, is
an error naming the file and the key, so a typo cannot silently train the wrong model.
"""

from lvisctl.config.loader import CONFIG_ROOT, Config, load_config, parse_overrides

__all__ = ["CONFIG_ROOT", "Config", "load_config", "parse_overrides"]
