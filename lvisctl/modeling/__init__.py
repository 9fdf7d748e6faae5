"""The model core (see ARCHITECTURE.md, "Model"): ``build_model(cfg, stats) -> LvisMaskRCNN``, with Mask
R-CNN, Cascade Mask R-CNN or HTC RoI heads (``model.roi_heads.type``)."""

from lvisctl.modeling.build import build_model
from lvisctl.modeling.detector import LvisMaskRCNN
from lvisctl.modeling.mask_assign import assign_mask_levels

__all__ = ["LvisMaskRCNN", "assign_mask_levels", "build_model"]
