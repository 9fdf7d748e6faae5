"""Prediction images in TensorBoard during training (``log.image_period``), drawn by the one drawing module
(:mod:`lvisctl.visualization.draw`: the colours and labels of ``lvisctl visualize``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lvisctl.data.categories import CategoryMap
from lvisctl.engine.eval_hook import evaluating
from lvisctl.engine.hooks import Hook, TrainerView
from lvisctl.registry import HOOKS
from lvisctl.training.lvis_eval import ValSet, load_val_set, make_predictor
from lvisctl.visualization.draw import Instances, draw_instances, enlarge


@HOOKS.register("image_log", help="draws the predictions on the first val images into TensorBoard")
class ImageLogHook(Hook):
    """Every ``log.image_period`` iterations: the first ``log.num_images`` val images with the model's
    predictions drawn (masks, boxes, class names) to TensorBoard (``val_images/<image_id>``); rank 0."""

    def __init__(self, period: int, num_images: int, score_thresh: float) -> None:
        self.period, self.num_images, self.score_thresh = period, num_images, score_thresh
        self.val: ValSet | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> ImageLogHook | None:
        log = cfg.log
        period = int(log.image_period or 0)
        if period <= 0:
            return None
        return cls(period, int(log.num_images or 4), float(log.image_score_thresh))

    def before_train(self, trainer: TrainerView) -> None:
        if trainer.info.is_main:
            self.val = load_val_set(trainer.cfg, trainer.run, self.num_images, write_gt=False)

    def after_step(self, trainer: TrainerView) -> None:
        it = trainer.loop.iteration
        if not trainer.info.is_main or not (it % self.period == 0 or it == trainer.max_iter):
            return
        from lvisctl.inference.runner import read_image

        assert self.val is not None and trainer.logger is not None
        stats = trainer.data.category_stats
        with evaluating(trainer):
            predictor = make_predictor(trainer.model, trainer)
            for image_id in self.val.image_ids:
                image = read_image(self.val.image_paths[image_id])
                dets = predictor.predict(image)
                drawn = draw_detections(
                    image, dets, stats.names, self.score_thresh, category_map=stats.category_map
                )
                trainer.logger.image(f"val_images/{image_id}", drawn, it)


def draw_detections(
    image: torch.Tensor,
    dets: Mapping[str, torch.Tensor],
    names: Sequence[str],
    score_thresh: float,
    *,
    limit: int = 20,
    min_side: int = 256,
    category_map: CategoryMap | None = None,
) -> torch.Tensor:
    """uint8 ``[3, H, W]``: masks and labelled boxes of the detections scoring >= ``score_thresh`` (at most
    ``limit``), in the category colours of :mod:`lvisctl.visualization.draw` (by LVIS id with
    ``category_map``, else by class index). Images smaller than ``min_side`` are enlarged by an integer
    factor first, so the labels stay readable."""
    from lvisctl.inference.detections import full_masks

    factor = max(1, min_side // max(image.shape[-2:]))
    canvas = (image.clamp(0, 1) * 255).to(torch.uint8)
    keep = (dets["scores"] >= score_thresh).nonzero().flatten()[:limit]
    labels = [int(x) for x in dets["labels"][keep].tolist()]
    scores = dets["scores"][keep].tolist()
    texts = [
        f"{names[lab - 1] if 0 < lab <= len(names) else lab} {s:.2f}"
        for lab, s in zip(labels, scores, strict=True)
    ]
    ids = [category_map.cat_id(lab) if category_map is not None else lab for lab in labels]
    # the predictor keeps RoI-level masks: pasted here, for the drawn detections only
    masks = full_masks(dets, keep).cpu() if len(keep) else None
    instances = Instances(dets["boxes"][keep].float().cpu(), ids, texts, masks)
    big, instances = enlarge(canvas, instances, factor)
    return draw_instances(big, instances)
