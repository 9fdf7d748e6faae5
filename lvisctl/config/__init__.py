"""Configs: YAML files with ``_base_`` inheritance and dotted command-line overrides, loaded once into a
typed, read-only :class:`Config`.

``configs/base.yaml`` is the schema: it names every key with its default and a comment (the
documentation). An experiment file starts with ``_base_: ../base.yaml`` (or a list of files) and overrides
a few keys; ``key.sub=value`` overrides from the command line come last. A key that the base does not
define, a value of the wrong type, a choice not allowed by ``lvisctl.config.choices``, a number out of its
range (``lvisctl.config.checks.RULES``) or keys that contradict each other
(``lvisctl.config.cross_checks``) is an error naming the file and the key, raised before anything is
loaded, so a typo cannot silently train the wrong model. ``configs/`` ships inside the package;
``--config`` takes a path or a packaged name.

The result is a frozen dataclass per section (``lvisctl.config.sections``: ``cfg.model.roi_heads`` is a
``RoIHeadsConfig``) that also reads as a mapping; nothing changes it after load, and
``cfg.replace({"inference.tta.mode": "paper"})`` gives a checked, changed copy. Dotted keys over nested
mappings are walked by ``lvisctl.config.dotted`` only.

Modules, bottom up: ``dotted``, ``yaml_io``, ``catalog`` (the packaged configs, ``CONFIG_ROOT``),
``choices`` / ``checks`` / ``cross_checks`` (allowed values), ``aliases`` (old keys), ``schema`` (the
base, merging, key and type checks), ``frozen`` / ``sections`` (the typed result), ``loader``.
"""

from lvisctl.config.aliases import ALIASES
from lvisctl.config.catalog import CONFIG_ROOT, resolve_config_path
from lvisctl.config.choices import CHOICES
from lvisctl.config.frozen import ConfigNode, FrozenList, Section, to_plain
from lvisctl.config.loader import load_config, parse_overrides, upgrade_saved_config
from lvisctl.config.sections import (
    AugmentConfig,
    BackboneConfig,
    CascadeConfig,
    Config,
    DataConfig,
    EnsembleConfig,
    FPNConfig,
    InferenceConfig,
    InstaBoostConfig,
    LogConfig,
    MaskHeadConfig,
    ModelConfig,
    MosaicConfig,
    PseudoLabelConfig,
    RoIHeadsConfig,
    RotateConfig,
    RPNConfig,
    RuntimeConfig,
    SamplerConfig,
    SolverConfig,
    TrainConfig,
    TTAConfig,
)

__all__ = [
    "ALIASES",
    "CHOICES",
    "CONFIG_ROOT",
    "AugmentConfig",
    "BackboneConfig",
    "CascadeConfig",
    "Config",
    "ConfigNode",
    "DataConfig",
    "EnsembleConfig",
    "FPNConfig",
    "FrozenList",
    "InferenceConfig",
    "InstaBoostConfig",
    "LogConfig",
    "MaskHeadConfig",
    "ModelConfig",
    "MosaicConfig",
    "PseudoLabelConfig",
    "RPNConfig",
    "RoIHeadsConfig",
    "RotateConfig",
    "RuntimeConfig",
    "SamplerConfig",
    "Section",
    "SolverConfig",
    "TTAConfig",
    "TrainConfig",
    "load_config",
    "parse_overrides",
    "resolve_config_path",
    "to_plain",
    "upgrade_saved_config",
]
