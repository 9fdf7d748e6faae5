"""What a full LVIS v1 run of each paper row costs on one 8-GPU node, on paper (docs/scale.md prints it).

Nothing here runs a model: the wall time of each Table 1 / Table 2 row is built from per-image costs
and the paper's schedules, every factor named below with where it comes from. Run it to re-derive the
table after changing an assumption (e.g. with measured GPU step times from ``benchmarks/gpu_check.sh``):

    python benchmarks/full_run_cost.py                 # markdown table
    python benchmarks/full_run_cost.py --step-s 0.20   # another measured R50 step (8 GPUs, 16 images)
"""

from __future__ import annotations

import argparse

TRAIN_IMAGES = 100_170  # LVIS v1 train
VAL_IMAGES = 19_809  # LVIS v1 val
GPUS, IMAGES_PER_GPU = 8, 2  # one node; batch 16 as the paper's (which used 16 GPUs x 1 image)

# -- per-iteration / per-image costs (seconds) -------------------------------------------------------
# detectron2 MODEL_ZOO.md, LVIS R50-FPN Mask R-CNN 1x: 0.292 s/iter (16 images on 8 V100) and 0.107 s per
# image inference (batch 1, 300 detections, score 1e-4): the only per-step figures of LVIS training at scale
# this work could check; no GPU measurement of lvisctl exists yet (gpu_check.sh's rows would give one).
R50_STEP_S = 0.292
R50_INFER_S = 0.107
# -- factors on the R50 Mask R-CNN step ---------------------------------------------------------------
HTC = 1.85  # lvisctl HTC / Mask R-CNN core, CPU (README: 0.54x the it/s); detectron2 Cascade, GPU: 1.21x
S101 = 1.59  # ResNeSt-101 backbone: GFLOPs (10.2) interpolated on detectron2's R50/R101/X101 LVIS steps
S200 = 2.44  # ResNeSt-200 ~ X101-32x8d's GFLOPs: detectron2 0.712 / 0.292
S269 = 3.3  # ResNeSt-269: S200 x 1.35 (its GFLOPs over S200's at the same input); a guess, no step measured
DCN = 1.31  # detectron2: R50 + deformable conv c3-c5 0.342 vs 0.261 s/iter
MULTI_SCALE = 1.37  # 400-1400 short side (long side <= 1333) vs 640-800: mean pixels of a 4:3 image
MASK_SCORING = 1.13  # lvisctl MaskIoU head, CPU measured (README)
HM = 2.0  # lvisctl HM mask head on the CPU: "halves the speed"; an upper bound on a GPU
STAGE2 = 0.5  # frozen backbone/FPN/RPN: no backbone backward (~2/3 of its step); assumption
# -- schedule ---------------------------------------------------------------------------------------
RFS_EPOCH = 1.147  # upper bound of an RFS epoch (t = 0.001) from the real category image counts
ST_EXTRA = 10_000  # self-training: Open Images pseudo-labelled images per epoch (paper)
OPEN_IMAGES = 100_000  # Open Images images pseudo-labelled (the paper does not say: assumed)
TTA_PASSES = 2 * sum((s / 800) ** 2 for s in (400, 600, 800, 1000, 1200, 1400))  # area of 6 scales x flip
EVAL_S = 38.9 + 16.6  # lvisctl evaluate segm + bbox at val size, measured on the 2-core CPU (README)


def train_hours(
    epochs: int, step_factor: float, *, rfs: bool, extra: int = 0, step_s: float = R50_STEP_S
) -> float:
    images = epochs * (TRAIN_IMAGES * (RFS_EPOCH if rfs else 1.0) + extra)
    iters = images / (GPUS * IMAGES_PER_GPU)
    return iters * step_s * step_factor / 3600


def infer_hours(images: int, factor: float, passes: float = 1.0) -> float:
    return images * R50_INFER_S * factor * passes / GPUS / 3600


def rows(step_s: float) -> list[tuple[str, float, str]]:
    """(row, hours, what it is made of)."""
    t = lambda *a, **k: train_hours(*a, step_s=step_s, **k)  # noqa: E731
    big = S101 * DCN * MULTI_SCALE * HTC  # Table 1's last rows: S101 + DCN + 400-1400 + HTC
    s1 = t(15, big, rfs=True)
    st = t(15, big, rfs=True, extra=ST_EXTRA) + infer_hours(TRAIN_IMAGES + OPEN_IMAGES, S101 * DCN * HTC)
    s200 = S200 * DCN * MULTI_SCALE * HTC * MASK_SCORING
    s269 = S269 * DCN * MULTI_SCALE * HTC * MASK_SCORING
    ft = t(15, big * STAGE2, rfs=True)
    out = [
        ("T1 baseline R50 (24 ep)", t(24, 1.0, rfs=False), "24 x 100k images"),
        ("T1 + DA", t(24, 1.0, rfs=False), "GPU step unchanged; CPU workers (below)"),
        ("T1 + EQL", t(24, 1.0, rfs=False), "EQL ~free"),
        ("T1 + RFS", t(24, 1.0, rfs=True), f"epoch x{RFS_EPOCH}"),
        ("T1 + HTC", t(24, HTC, rfs=True), f"step x{HTC}"),
        ("T1 + S101+ (15 ep)", s1, f"step x{big:.2f} (S101, DCN, 400-1400, HTC)"),
        ("T1 + tricks = T2 baseline", s1, "wd, RFS-Mosaic, aligned boxes: free"),
        ("T2 + ST", st, "+10k images/epoch + pseudo labels on LVIS train + 100k Open Images"),
        ("T2 + MS (stage 2)", t(15, big * STAGE2 * MASK_SCORING, rfs=True), "heads fine-tune with MaskIoU"),
        (
            "T2 ST+MS+S200+",
            t(15, s200, rfs=True, extra=ST_EXTRA),
            f"step x{s200:.2f}; ST inference not added",
        ),
        ("T2 ST+MS+S200+ +S269", t(15, s269, rfs=True, extra=ST_EXTRA), f"step x{s269:.2f}"),
        ("T2 GS (stage 2)", ft, f"step x{big * STAGE2:.2f}"),
        ("T2 GS + HM (stage 2)", t(15, big * STAGE2 * HM, rfs=True), f"HM x{HM} (CPU ratio: upper bound)"),
        (
            "T2 all (S269 stage 1 + GS+HM+MS)",
            t(15, s269, rfs=True, extra=ST_EXTRA)
            + t(15, S269 * DCN * MULTI_SCALE * HTC * STAGE2 * HM, rfs=True),
            "stage 1 + stage 2",
        ),
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--step-s", type=float, default=R50_STEP_S, help="R50 Mask R-CNN s/iter, 16 images on 8 GPUs"
    )
    args = ap.parse_args()
    single = infer_hours(VAL_IMAGES, S101 * DCN * HTC)
    tta = infer_hours(VAL_IMAGES, S269 * DCN * HTC * MASK_SCORING, TTA_PASSES)
    print("| row | train wall on 8 GPUs (h) | made of |")
    print("|---|---|---|")
    for name, hours, how in rows(args.step_s):
        print(f"| {name} | {hours:.1f} | {how} |")
    print()
    print(
        f"val inference, single scale, S101+ HTC: {single * 60:.0f} min; paper TTA (6 scales x flip = "
        f"{TTA_PASSES:.1f} single-scale passes) with S269: {tta:.1f} h; evaluate: {EVAL_S / 60:.1f} min CPU"
    )
    rate = GPUS * IMAGES_PER_GPU / args.step_s
    print(f"R50 stage 1 consumes {rate:.0f} samples/s per node = {rate / GPUS:.1f} per GPU")


if __name__ == "__main__":
    main()
