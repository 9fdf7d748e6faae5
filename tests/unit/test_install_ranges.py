"""pyproject.toml declares ranges (a cluster's own torch is kept), constraints/tested.txt the exact versions
CI installs, constraints/min.txt the lower bounds `make test-min` runs: the three must agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs python 3.11's tomllib")
REPO = Path(__file__).resolve().parents[2]
# The pair the GPU machine (and many clusters) has: it must stay installable without replacing torch.
GPU_MACHINE = {"torch": "2.11.0", "torchvision": "0.26.0"}


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {canonicalize_name(r.name): r for r in map(Requirement, deps)}


def _pins(name: str) -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_no_runtime_dependency_is_pinned_exactly():
    exact = [
        str(r) for r in _requirements().values() if any(s.operator in ("==", "===") for s in r.specifier)
    ]
    assert exact == []


def test_the_gpu_machines_torch_is_inside_the_range():
    reqs = _requirements()
    for name, version in GPU_MACHINE.items():
        assert reqs[name].specifier.contains(version), (name, str(reqs[name].specifier))


def test_tested_pins_cover_every_dependency_and_satisfy_the_ranges():
    reqs, pins = _requirements(), _pins("tested.txt")
    assert set(reqs) <= set(pins)
    for name, req in reqs.items():
        assert req.specifier.contains(pins[name]), (name, str(pins[name]), str(req.specifier))


def test_min_pins_are_the_lower_bounds():
    reqs, pins = _requirements(), _pins("min.txt")
    assert {"torch", "torchvision"} <= set(pins)
    for name, version in pins.items():
        spec = reqs[name].specifier
        lower = [Version(s.version) for s in spec if s.operator == ">="]
        assert spec.contains(version) and lower and version.release[:2] == lower[0].release[:2], (
            name,
            str(spec),
        )
