"""Paper TTA moves each image to the device once, as decoded (uint8), for all its passes; the FPN maps are
cast to float32 once per forward under autocast, not by RoIAlign on every call."""

import numpy as np
import pytest
import torch
from PIL import Image

from lvisctl.inference.chunks import ImageItem
from lvisctl.inference.predictor import Predictor
from lvisctl.inference.runner import iter_batches
from lvisctl.inference.tta import TTAPredictor, TTASettings
from lvisctl.modeling.fpn import roi_feature_maps
from tests.helpers.inference import OFF
from tests.helpers.model import FixedModel


@pytest.mark.parametrize("tta", [False, True])
def test_one_upload_per_image_for_every_pass(monkeypatch, tta):
    model = FixedModel()
    if tta:
        predictor = TTAPredictor(
            model, "cpu", TTASettings(scales=(30, 60), max_size=1333, flip=True, **OFF), torch.ones(4)
        )
    else:
        predictor = Predictor(model, "cpu", scales=(30, 45, 60))
    uploads, prepared = [], []
    upload, prepare = predictor.upload, predictor.prepare
    monkeypatch.setattr(predictor, "upload", lambda imgs: uploads.append(upload(imgs)) or uploads[-1])
    monkeypatch.setattr(predictor, "prepare", lambda img, scale: prepared.append(img) or prepare(img, scale))
    image = torch.randint(0, 256, (3, 60, 100), dtype=torch.uint8)
    out = predictor.predict(image)
    assert len(uploads) == 1 and len(prepared) == (4 if tta else 3)
    assert all(p is uploads[0][0] for p in prepared)  # every pass resizes the one uploaded copy
    assert uploads[0][0].dtype == torch.uint8  # copied as decoded; converted on the device
    # same detections as from the float image the reader used to hand over
    ref = predictor.predict(image.float() / 255)
    assert torch.equal(out["boxes"], ref["boxes"]) and torch.equal(out["scores"], ref["scores"])


def test_inference_reader_hands_over_uint8(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.full((20, 30, 3), 200, dtype=np.uint8)).save(path)
    (batch,) = list(iter_batches([ImageItem(1, path, (20, 30))], batch_size=1, num_workers=0))
    image_id, image, problem, _ = batch[0]
    assert image_id == 1 and problem is None and image.dtype == torch.uint8 and int(image.max()) == 200


def test_fpn_maps_cast_once_under_autocast():
    feats = {k: torch.rand(1, 4, 8, 8) for k in ("0", "1", "2", "3", "pool")}
    assert all(m is feats[k] for m, k in zip(roi_feature_maps(feats), "0123", strict=True))
    low = {k: v.bfloat16() for k, v in feats.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = roi_feature_maps(low)
    assert [m.dtype for m in maps] == [torch.float32] * 4
    assert torch.equal(maps[0], low["0"].float())  # exact: the same values RoIAlign would cast to
