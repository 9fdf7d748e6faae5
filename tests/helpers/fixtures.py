"""Session-scoped tiny inputs shared by every test file (made once per ``pytest`` run): read them, never
write into them (copy what a test must change into its own ``tmp_path``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``lvisctl data synth --preset tiny --seed 0``: the paths ``generate_synthetic_lvis`` returns."""
    from lvisctl.data.synth import generate_synthetic_lvis

    return generate_synthetic_lvis(tmp_path_factory.mktemp("tiny_synth") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_lvis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three PNG images and their annotated LVIS json (``helpers.tiny_run.make_lvis``)."""
    from tests.helpers.tiny_run import make_lvis

    return make_lvis(tmp_path_factory.mktemp("tiny_lvis"))
