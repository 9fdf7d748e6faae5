"""The plug-in registry: one declaration per name, lookups with "did you mean", lazy package import."""

from __future__ import annotations

import pytest

from lvisctl.errors import LvisctlError
from lvisctl.registry import REGISTRIES, Registry


def test_register_get_and_describe() -> None:
    reg: Registry[object] = Registry("widget")

    @reg.register("round", help="a round widget")
    class Round:
        pass

    reg.add("square", int, help="a square one")
    assert reg.get("round") is Round
    assert reg.names() == ("round", "square")
    assert reg.descriptions() == {"round": "a round widget", "square": "a square one"}
    assert "round" in reg and "oval" not in reg


def test_unknown_name_is_one_line_error_with_suggestion() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("seesaw", object, help="x")
    with pytest.raises(
        LvisctlError, match=r"widget: unknown value 'seesw' \(choose from seesaw\); did you mean 'seesaw'\?"
    ):
        reg.get("seesw")


def test_same_name_twice_is_refused() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("a", int, help="x")
    reg.add("a", int, help="x")  # the same object again (a module imported twice) is fine
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", float, help="y")


def test_packages_are_imported_on_first_lookup() -> None:
    # lvisctl.errors holds no plug-ins; importing it by name must not fail and must mark the registry loaded
    reg: Registry[object] = Registry("widget", packages=("lvisctl.errors",))
    assert reg.names() == ()


def test_a_config_key_has_one_registry() -> None:
    key = next(iter(REGISTRIES))
    with pytest.raises(ValueError, match="two registries"):
        Registry("again", key)
