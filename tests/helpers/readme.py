"""README.md's shell blocks and their readme-test markers, and the commands they run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

README = REPO / "README.md"


MARKER = re.compile(r"<!-- readme-test: (run|make-dry-run|skip: [^>]+?) -->")


FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def readme_blocks() -> list[tuple[str, str, str]]:
    """(marker, language, code) of every fenced block, in order; marker '' where there is none."""
    text = README.read_text()
    blocks = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        blocks.append((marker.group(1) if marker else "", m.group(1), m.group(2)))
    return blocks


SHELL_BLOCKS = [
    (i, mark, code) for i, (mark, lang, code) in enumerate(readme_blocks()) if lang in ("bash", "sh")
]


def commands(code: str) -> str:
    """The block as one script: continuation lines joined, then shrunk to tiny sizes."""
    script = re.sub(r"\\\n\s*", " ", code)
    for pattern, repl in SHRINK:
        script = pattern.sub(repl, script)
    return script


def real_lvis_block() -> str:
    blocks = [code for _, mark, code in SHELL_BLOCKS if mark == "run" and "--stage 2" in code]
    assert len(blocks) == 1, "README.md has no (or several) real-LVIS blocks"
    return blocks[0]


def real_layout(work: Path, env: dict[str, str]) -> Path:
    """datasets/coco/{train,val,test}2017/ + datasets/lvis/lvis_v1_*.json from tiny synthetic LVIS."""
    synth = work / "synth"
    cmd = [sys.executable, "-m", "lvisctl", "data", "synth", "--preset", "tiny", "--out", str(synth)]
    subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True, timeout=300)
    coco, lvis = work / "datasets" / "coco", work / "datasets" / "lvis"
    lvis.mkdir(parents=True)
    for folder in ("train2017", "val2017", "test2017"):
        shutil.copytree(synth / folder, coco / folder)
    for name in ("lvis_v1_train.json", "lvis_v1_val.json", "lvis_v1_image_info_test_dev.json"):
        data = json.loads((synth / name).read_text())
        for i, image in enumerate(data["images"]):
            assert "file_name" not in image and image["coco_url"].startswith("http")
            folder, file = image["coco_url"].split("/")[-2:]
            if name == "lvis_v1_val.json" and i % 2 == 0:  # LVIS v1 val images from COCO train2017
                (coco / folder / file).rename(coco / "train2017" / file)
                image["coco_url"] = f"http://images.cocodataset.org/train2017/{file}"
        (lvis / name).write_text(json.dumps(data))
    shutil.rmtree(synth)
    return work / "datasets"


TINY_TRAIN = (
    "device=cpu model.backbone.name=tiny model.backbone.tiny_width=8 model.fpn.out_channels=16 "
    "model.roi_heads.fc_dim=32 model.mask_head.conv_dim=16 model.mask_head.num_convs=1 train.batch_size=2 "
    "train.num_workers=0 augment.train_scales=[64] augment.max_size=96 augment.mosaic.size=96 "
    "sampler.rfs_threshold=0.3 solver.max_iter=2 solver.warmup_iters=0"
)


SHRINK = [
    # the tiny trunk has no ImageNet weights: from scratch, said explicitly (a named weight is fetched)
    (re.compile(r"(\s*)model\.backbone\.weights=\S+"), r"\1model.backbone.weights=none"),
    (re.compile(r"^(lvisctl train .*)$", re.M), rf"\1 {TINY_TRAIN}"),
    (re.compile(r"^(lvisctl tta-infer .*)$", re.M), r"\1 --scales 64"),
]
