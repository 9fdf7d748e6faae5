"""README.md's command blocks run as written (at tiny sizes, on synthetic LVIS laid out as detectron2's real
LVIS), and every link of README.md, ARCHITECTURE.md and docs/ leads somewhere.

Each ```bash block of README.md carries a marker on the line before it:
``<!-- readme-test: run -->`` (executed here), ``<!-- readme-test: make-dry-run -->`` (each ``make TARGET``
is checked with ``make -n``: the real thing installs a venv) or ``<!-- readme-test: skip: REASON -->``
(listed as a skipped test with its reason). A block without a marker fails the suite: none is dropped
silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.readme import (
    FENCE,
    README,
    SHELL_BLOCKS,
    commands,
)

REPO = Path(__file__).resolve().parents[2]

# The README's commands as written, shrunk to the tests' tiny model and 64 px images.


def _param(i: int, mark: str, code: str):
    first = code.strip().splitlines()[0][:40]
    marks = [pytest.mark.skip(reason=mark.removeprefix("skip: "))] if mark.startswith("skip:") else []
    if mark == "run":
        marks.append(pytest.mark.slow)
    return pytest.param(mark, code, id=f"block{i}-{mark.split(':')[0]}-{first}", marks=marks)


def test_every_shell_block_is_marked():
    assert SHELL_BLOCKS, "README.md has no command blocks"
    unmarked = [code.splitlines()[0] for _, mark, code in SHELL_BLOCKS if not mark]
    assert not unmarked, f"README blocks without a readme-test marker: {unmarked}"


def test_readme_fits_on_a_few_screens():
    assert len(README.read_text().splitlines()) <= 260


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A working folder as after `make demo`: .venv/bin/activate, lvisctl on the PATH, a demo-run, and
    tiny synthetic LVIS in detectron2's layout (datasets/coco/*2017/, datasets/lvis/lvis_v1_*.json)."""
    work = tmp_path_factory.mktemp("readme")
    shim = work / ".venv" / "bin"
    shim.mkdir(parents=True)
    (shim / "lvisctl").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lvisctl "$@"\n')
    (shim / "lvisctl").chmod(0o755)
    (shim / "activate").write_text(f'export PATH="{shim}:$PATH"\n')
    (work / "configs").symlink_to(REPO / "configs")
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    synth = work / "synth"
    for args in (["--out", synth], ["--run-dir", work / "demo-run", "--no-images"]):
        cmd = [sys.executable, "-m", "lvisctl", "data", "synth", "--preset", "tiny", *map(str, args)]
        subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True, timeout=300)
    (work / "datasets").mkdir()
    for name in ("coco", "lvis"):
        (work / "datasets" / name).symlink_to(synth)
    return work, env


@pytest.mark.parametrize(("mark", "code"), [_param(*b) for b in SHELL_BLOCKS])
def test_readme_block(mark, code, sandbox):
    if mark == "make-dry-run":
        targets = re.findall(r"^make (\S+)", code, re.M)
        assert targets
        for target in targets:
            proc = subprocess.run(
                ["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60
            )
            assert proc.returncode == 0, proc.stderr
        return
    work, env = sandbox
    script = "set -euo pipefail\n" + commands(code)
    proc = subprocess.run(
        ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, f"{script}\n---\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


# ------------------------------------------------------------------------------------------ links
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def github_anchors(markdown: Path) -> set[str]:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", markdown.read_text())
    heads = re.findall(r"^#{1,6} (.+?)\s*#*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def broken_links(markdown: Path) -> list[str]:
    problems = []
    for target in LINK.findall(FENCE.sub("", markdown.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # web links are not fetched here
        path, _, anchor = target.partition("#")
        dest = (markdown.parent / path).resolve() if path else markdown
        if not dest.exists():
            problems.append(f"{markdown.name}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest):
            problems.append(f"{markdown.name}: {target} (no such heading)")
    return problems


DOCUMENTS = [README, REPO / "ARCHITECTURE.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("markdown", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_lead_somewhere(markdown):
    assert broken_links(markdown) == []


def test_the_link_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path, monkeypatch):
    page = REPO / "docs" / "faq.md"
    fake = tmp_path / "x.md"
    fake.write_text(
        f"# Title\n[a]({page}#no-such-heading) [b](missing.md) [c](#title) [d](https://x.org/y)\n"
    )
    problems = broken_links(fake)
    assert len(problems) == 2 and "no such heading" in problems[0] and "no such file" in problems[1]
