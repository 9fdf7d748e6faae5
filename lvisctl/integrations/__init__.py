"""lvisctl's pieces inside other frameworks (optional extras; nothing here is imported by lvisctl itself).

* ``lvisctl.integrations.mmdet``: EQL, Balanced GroupSoftmax, the balanced mask loss and the boundary loss
  as mmdet losses, and ``LvisctlLVISMetric`` (lvisctl's evaluator as an mmengine metric); load it from an
  mmdet config with ``custom_imports = dict(imports=["lvisctl.integrations.mmdet"])``.
* ``lvisctl.integrations.detectron2``: ``LvisctlLVISEvaluator``, a ``DatasetEvaluator``.
"""
