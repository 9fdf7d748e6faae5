"""No results file lvisctl writes holds an empty mask (issue 20, item 1): the predictor leaves the surely
empty ones out before its per-image cap (a real detection takes the slot), the writer drops the rest and
both are counted; ``ensemble`` drops its inputs' empty masks before fusing."""

from __future__ import annotations

import json

import numpy as np
import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.inference.postprocess import masks_to_rles, surely_empty
from lvisctl.inference.predictor import Predictor
from lvisctl.inference.results import DropCount, detections_to_records, is_empty_mask
from tests.helpers.lvis_reference import rect_rle, write_json
from tests.helpers.model import FixedModel


class EmptyTopModel(FixedModel):
    """Four RoI-level detections: the best-scored mask is all below 0.5, the second's box lies outside
    the image (the real model clamps boxes, but a mask threshold can still empty it), two real ones."""

    def forward(self, images, paste_masks=True):
        outs = []
        for img in images:
            h, w = img.shape[-2:]
            probs = torch.full((4, 1, 28, 28), 0.9)
            probs[0] = 0.3  # nothing above the threshold
            outs.append(
                {
                    "boxes": torch.tensor(
                        [[2.0, 2.0, 20, 20], [w + 5.0, 0, w + 9, 6], [4.0, 4, 24, 24], [10.0, 10, 30, 30]]
                    ),
                    "scores": torch.tensor([0.95, 0.9, 0.8, 0.7]),
                    "labels": torch.tensor([1, 2, 1, 3]),
                    "mask_probs": probs,
                }
            )
        return outs


def test_surely_empty_implies_an_empty_pasted_mask():
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand((60, 1, 28, 28), generator=gen) * torch.rand((60, 1, 1, 1), generator=gen)
    xy = torch.rand((60, 2), generator=gen) * 120 - 30
    boxes = torch.cat([xy, xy + torch.rand((60, 2), generator=gen) * 30], dim=1)
    flagged = surely_empty(probs, boxes, (64, 80), 0.5)
    empty = torch.tensor([is_empty_mask(r) for r in masks_to_rles(probs, boxes, (64, 80), 0.5)])
    assert flagged.any() and bool((flagged & ~empty).sum() == 0)  # sufficient: never flags a real mask


def test_predictor_leaves_empty_masks_out_before_its_cap():
    predictor = Predictor(EmptyTopModel(), "cpu", scales=(40,), detections_per_image=2)
    dets = predictor.predict(torch.rand(3, 40, 60))
    assert dets["scores"].tolist() == [0.800000011920929, 0.699999988079071]  # both real ones kept
    assert predictor.empty_dropped == 2
    records = detections_to_records(1, dets, CategoryMap([5, 6, 7]))
    assert len(records) == 2 and not any(is_empty_mask(r["segmentation"]) for r in records)


def test_writer_drops_and_counts_the_empty_masks_it_meets():
    masks = torch.zeros((3, 32, 32), dtype=torch.bool)
    masks[0, 4:10, 4:10] = True
    masks[2, 0:3, 0:3] = True
    dets = {
        "boxes": torch.tensor([[4.0, 4, 10, 10], [1.0, 1, 9, 9], [0.0, 0, 3, 3]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([1, 1, 2]),
        "masks": masks,
    }
    dropped = DropCount()
    records = detections_to_records(3, dets, CategoryMap([10, 20]), dropped)
    assert [r["score"] for r in records] == [0.8999999761581421, 0.699999988079071]
    assert dropped.empty_masks == 1


def test_ensemble_drops_empty_input_masks_before_the_cap(tmp_path):
    from lvisctl.inference.ensemble import ensemble_to_run_dir

    def rec(score, box, rle):
        return {"image_id": 1, "category_id": 1, "score": score, "bbox": box, "segmentation": rle}

    empty = {"size": [48, 48], "counts": rect_rle(0, 0, 0, 0, 48, 48)["counts"]}
    full = [
        rec(0.99, [0.0, 0.0, 8.0, 8.0], empty),
        rec(0.5, [20.0, 20.0, 10.0, 10.0], rect_rle(20, 20, 10, 10, 48, 48)),
    ]
    segm = write_json(tmp_path / "a.segm.json", [{k: v for k, v in r.items() if k != "bbox"} for r in full])
    write_json(tmp_path / "a.bbox.json", [{k: v for k, v in r.items() if k != "segmentation"} for r in full])
    outcome = ensemble_to_run_dir([segm], tmp_path / "out.json", detections_per_image=1)
    written = json.loads((tmp_path / "out.segm.json").read_text())
    assert len(written) == 1 and not is_empty_mask(written[0]["segmentation"])
    assert np.isclose(written[0]["score"], 0.5) and outcome.empty_dropped == 1


def test_real_model_refills_the_slots_of_empty_masks(monkeypatch):
    """lvisctl's (untrained, so many masks are empty) model is asked for a margin above the cap: the
    surely-empty masks give their slots to real detections, and the model's cap is restored after."""
    import contextlib

    import lvisctl.inference.predictor as predictor_mod
    from tests.helpers.model import tiny_model

    cap = 120
    torch.manual_seed(0)
    model = tiny_model("inference.score_thresh=0.0", f"inference.detections_per_image={cap}").eval()
    image = torch.rand(3, 64, 96)
    cmap = CategoryMap(range(10, 14))

    def written() -> list[dict]:
        pred = Predictor(model, "cpu", scales=(64,), max_size=200, detections_per_image=cap)
        return detections_to_records(1, pred.predict(image), cmap)

    refilled = written()
    assert model.roi_heads.post.detections_per_img == cap  # restored
    monkeypatch.setattr(predictor_mod, "candidate_margin", lambda *a, **k: contextlib.nullcontext())
    plain = written()  # no margin: the model's own top-k binds, empty masks leave holes
    assert len(plain) < len(refilled) <= cap
    key = {(r["category_id"], tuple(r["bbox"])) for r in refilled}
    assert {(r["category_id"], tuple(r["bbox"])) for r in plain} <= key
    assert not any(is_empty_mask(r["segmentation"]) for r in refilled)


def _refill_case(cap: int, monkeypatch) -> tuple[list[dict], list[dict], DropCount, int]:
    """(written with spares, the reference's non-empty records in order, the writer's drop count, the
    reference's empty masks before the last one written) on lvisctl's untrained tiny model."""
    import contextlib

    import lvisctl.inference.predictor as predictor_mod
    from lvisctl.inference.predictor import select, spare_count, writing_spares
    from tests.helpers.model import tiny_model

    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))
    model = tiny_model("inference.score_thresh=0.0", f"inference.detections_per_image={cap}").eval()
    pred = Predictor(model, "cpu", scales=(64,), max_size=200, detections_per_image=cap)
    dropped = DropCount()
    with writing_spares(pred):
        written = _records(pred.predict(image), dropped)
    assert pred.spares == 0 and len(pred.predict(image)["scores"]) <= cap  # other consumers: the cap

    # Reference: all of the model's cap + margin candidates (less the surely-empty), each pasted.
    n = cap + spare_count(cap)
    model.roi_heads.post.detections_per_img = n
    monkeypatch.setattr(predictor_mod, "candidate_margin", lambda *a, **k: contextlib.nullcontext())
    ref = Predictor(model, "cpu", scales=(64,), max_size=200, detections_per_image=n).predict(image)
    empty = [is_empty_mask(r) for r in masks_to_rles(ref["mask_probs"], ref["boxes"], (64, 96), 0.5)]
    real = torch.tensor([i for i, e in enumerate(empty) if not e], dtype=torch.int64)
    assert any(empty[:cap])  # masks that are not surely empty but paste empty
    last = int(real[cap - 1]) if len(real) >= cap else len(empty) - 1
    return written, _records(select(ref, real)), dropped, sum(empty[: last + 1])


def _records(dets, dropped=None):
    return detections_to_records(1, dets, CategoryMap(range(10, 14)), dropped)


def test_written_masks_are_the_top_cap_of_the_non_empty_candidates(monkeypatch):
    """Exact (issue 20 item 1): a results writer writes per image the top ``cap`` of the candidates whose
    mask pastes to something, also when a mask only turns out empty at the original size (its peak
    vanishes in the resize; not surely empty): here the margin refills every slot."""
    written, real, dropped, empties = _refill_case(50, monkeypatch)
    assert len(real) >= 50 and written == real[:50]
    assert dropped.empty_masks == empties > 0


def test_without_enough_spares_every_non_empty_candidate_is_written(monkeypatch):
    """The margin (10%) is smaller than an untrained model's empty masks: min(cap, non-empty) are written."""
    written, real, dropped, empties = _refill_case(120, monkeypatch)
    assert len(real) < 120 and written == real
    assert dropped.empty_masks == empties


def test_paper_tta_merge_refills_the_slots_of_masks_that_paste_empty():
    """Paper TTA: the merge's final top-k keeps the spares too, so the written detections are the top
    ``cap`` of the merged candidates (cap + margin) whose chosen mask pastes to something."""
    from lvisctl.inference.predictor import select, spare_count, writing_spares
    from lvisctl.inference.tta import TTAPredictor
    from lvisctl.inference.tta_settings import TTASettings
    from tests.helpers.model import tiny_model

    cap = 50
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))
    model = tiny_model("inference.score_thresh=0.0").eval()
    settings = TTASettings(scales=(48, 64), max_size=200, flip=True, range_filter=False)
    pred = TTAPredictor(model, "cpu", settings, torch.ones(5), detections_per_image=cap)
    dropped = DropCount()
    with writing_spares(pred):
        written = _records(pred.predict(image), dropped)
    assert len(pred.predict(image)["scores"]) == cap  # without a writer: the cap, as before

    pred.spares = 10_000  # reference: every merged candidate, best first, each chosen mask pasted
    ref = pred.predict(image)
    del ref["cap"]
    rles = masks_to_rles(ref["mask_probs"], ref["paste_boxes"], (64, 96), 0.5)
    real = [i for i, r in enumerate(rles[: cap + spare_count(cap)]) if not is_empty_mask(r)]
    assert any(is_empty_mask(r) for r in rles[:cap])
    assert written == _records(select(ref, torch.tensor(real[:cap]))) and len(written) == min(cap, len(real))
    assert dropped.empty_masks > 0


def test_ensemble_refills_the_slot_of_a_fused_mask_that_votes_empty(tmp_path):
    """Three inputs agree on a box but each puts its mask in another corner: the WBF vote (>= half the
    weight per pixel) is empty. That fused detection is dropped and the next one takes the slot."""
    from lvisctl.inference.ensemble import ensemble_to_run_dir

    paths = []
    for t, (x, y) in enumerate([(0, 0), (12, 0), (0, 12)]):
        recs = [
            {
                "image_id": 1,
                "category_id": 1,
                "score": 0.9,
                "bbox": [0.0, 0.0, 16.0, 16.0],
                "segmentation": rect_rle(x, y, 4, 4, 48, 48),
            },
            {
                "image_id": 1,
                "category_id": 1,
                "score": 0.5,
                "bbox": [30.0, 30.0, 10.0, 10.0],
                "segmentation": rect_rle(30, 30, 10, 10, 48, 48),
            },
        ]
        paths.append(write_json(tmp_path / f"in{t}.json", recs))
    outcome = ensemble_to_run_dir(paths, tmp_path / "out.json", detections_per_image=1)
    written = json.loads((tmp_path / "out.segm.json").read_text())
    assert len(written) == 1 and np.isclose(written[0]["score"], 0.5)
    assert not is_empty_mask(written[0]["segmentation"]) and outcome.empty_dropped == 1


def test_checkpoint_ensemble_keeps_fused_spares_while_members_keep_their_caps():
    """``tta-infer`` with several checkpoints: under a writer the fusion keeps spares and says its cap;
    each member still gives at most its cap (the WBF sees what it saw before), and the first ``cap``
    fused detections are those of a run without spares."""
    from lvisctl.inference.ensemble_fusion import EnsemblePredictor, EnsembleSettings
    from lvisctl.inference.predictor import writing_spares
    from tests.helpers.model import tiny_model

    cap = 50
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))
    models = [tiny_model("inference.score_thresh=0.0", f"inference.detections_per_image={cap}").eval()]
    models.append(tiny_model("inference.score_thresh=0.0", f"inference.detections_per_image={cap}").eval())
    with torch.no_grad():  # a second, different model
        for p in models[1].parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    members = [Predictor(m, "cpu", scales=(64,), max_size=200, detections_per_image=cap) for m in models]
    ens = EnsemblePredictor(members, EnsembleSettings(), detections_per_image=cap)
    plain = ens.predict(image)
    with writing_spares(ens):
        assert all(m.spares == 0 for m in members)  # the WBF's inputs keep their caps
        spared = ens.predict(image)
    assert ens.spares == 0 and "cap" not in plain and int(spared["cap"]) == cap
    assert len(plain["scores"]) == cap < len(spared["scores"]) <= cap + 5
    assert torch.equal(spared["scores"][:cap], plain["scores"]) and torch.equal(
        spared["masks"][:cap], plain["masks"]
    )
