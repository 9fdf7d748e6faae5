"""Test tiers and the fixtures every test file may use.

``make test`` runs everything; ``make test-fast`` (``pytest -m "not slow"``) is the inner loop. What is
``slow`` is decided here, by rule, so a new test file needs no marker of its own:

- every test under ``tests/integration/`` and ``tests/e2e/`` (they train, start processes or run the
  whole CLI on real models);
- every test that asks for a fixture in ``SLOW_FIXTURES`` (they start processes);
- the unit tests in ``SLOW_UNIT`` (measured: several seconds each on a 2-core machine).

Mark a unit test ``@pytest.mark.slow`` in its file when it is slow for another reason.
"""

import os

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["tests.helpers.cli", "tests.helpers.fixtures"]

SLOW_DIRS = ("integration", "e2e")
SLOW_FIXTURES = frozenset({"subprocess_env"})
# Unit tests measured at several seconds each (pytest --durations=0 on tests/unit, 2 CPU cores): whole
# files by name, single tests by "file::test" (parametrized ids included by prefix).
SLOW_UNIT = frozenset()


def _slow(item: pytest.Item) -> bool:
    parts = item.path.relative_to(item.config.rootpath).parts
    if len(parts) > 1 and parts[0] == "tests" and parts[1] in SLOW_DIRS:
        return True
    if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    name = item.path.name
    test = f"{name}::{item.name.split('[')[0]}"
    return name in SLOW_UNIT or test in SLOW_UNIT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        if _slow(item) and item.get_closest_marker("slow") is None:
            item.add_marker(slow)
