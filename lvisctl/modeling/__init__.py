"""The Mask R-CNN model core (see ARCHITECTURE.md, "Model"): ``build_model(cfg, stats) -> LvisMaskRCNN``."""

from lvisctl.modeling.build import build_model
from lvisctl.modeling.detector import LvisMaskRCNN
from lvisctl.modeling.mask_assign import assign_mask_levels

__all__ = ["LvisMaskRCNN", "assign_mask_levels", "build_model"]
