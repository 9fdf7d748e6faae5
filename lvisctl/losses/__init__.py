"""Losses of the model core: classification (softmax / sigmoid / EQL / BAGS / Seesaw / EQLv2 / federated: the
plug-ins of ``lvisctl.registry.CLS_LOSSES``), balanced mask, boundary."""

from lvisctl.losses.balanced_mask import balanced_mask_loss
from lvisctl.losses.eql import EqualizationLoss
from lvisctl.losses.group_softmax import BalancedGroupSoftmax

__all__ = ["BalancedGroupSoftmax", "EqualizationLoss", "balanced_mask_loss"]
