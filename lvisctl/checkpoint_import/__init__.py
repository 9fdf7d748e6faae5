"""Import Mask R-CNN checkpoints of torchvision, mmdet 3.x and detectron2 as lvisctl checkpoints.

``import_checkpoint(file, run_dir)`` (``lvisctl import-checkpoint``) writes a final stage-1 checkpoint that
``train --stage 2``, ``finetune-bags``, ``pseudolabel`` and ``tta-infer`` use like their own. Loading never
executes code from the file (``reader``); key layouts and weight conventions live in ``layouts``.
"""

from lvisctl.checkpoint_import.importer import ImportReport, ImportResult, import_checkpoint

__all__ = ["ImportReport", "ImportResult", "import_checkpoint"]
