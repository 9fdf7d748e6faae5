"""Hybrid Task Cascade without the semantic branch (Chen et al., CVPR 2019; ``model.roi_heads.type: htc``).

A ``CascadeRoIHeads`` with the two things HTC changes switched on (``interleaved``, ``mask_flow``),
as mmdet's ``HybridTaskCascadeRoIHead`` (``mmdet/models/roi_heads/htc_roi_head.py``) sets them in its
``CascadeRoIHead``:

* interleaved execution (mmdet ``interleaved=True``): stage i's mask branch trains on RoIs re-sampled at
  the stage's IoU threshold from the boxes its box branch just regressed, not on the box branch's samples
  (mmdet: "re-assign and sample rois for mask branch" after ``refine_bboxes``);
* mask information flow (mmdet ``mask_info_flow=True``): mask head i > 0 first runs heads 0..i-1 on the
  same RoI features, each passing its last conv features to the next (``flow``), and adds them through its
  1x1 conv ``conv_res`` (mmdet ``HTCMaskHead``); at test time the same chain runs on the final boxes.

State-dict layout: a cascade's, plus ``stages.{i}.mask.head.conv_res.*`` for i > 0 (how
``state_dict_layout`` tells the two apart).
"""

from __future__ import annotations

from lvisctl.modeling.roi_heads import CascadeRoIHeads
from lvisctl.registry import ROI_HEADS


@ROI_HEADS.register("htc", help="Hybrid Task Cascade without the semantic branch (Table 1's HTC)")
class HybridTaskCascadeRoIHeads(CascadeRoIHeads):
    layout = "htc"
    mask_flow = True  # from_config builds the heads of stages 1.. with the flow input
    interleaved = True  # mask branch i: its regressed boxes (GT added again) sampled at its IoU threshold
