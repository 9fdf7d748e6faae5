"""The evaluation edge cases (federated negatives, not-exhaustive categories, the 300 cap) that the metric,
CLI and real-data tests all score."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils

from tests.helpers.lvis_reference import (
    det_rect,
    gt_rect,
    lvis_category,
    lvis_dataset,
    lvis_image,
    without_bbox,
)

CATS = [
    lvis_category(1, "f"),
    lvis_category(2, "c"),
    lvis_category(3, "r"),
    lvis_category(4, "f"),
    lvis_category(5, "c"),
]


def edge_case_gt() -> dict:
    images = [
        lvis_image(1, neg=[2, 4]),
        lvis_image(2, 48, 64, neg=[3], not_exhaustive=[1]),
        lvis_image(3, neg=[1, 4]),
        lvis_image(4, 32, 32),  # gets no detections
        lvis_image(5, 96, 96, neg=[4]),
    ]
    anns = [
        gt_rect(1, 1, 1, 4, 4, 20, 20),
        gt_rect(2, 1, 1, 30, 30, 30, 30),
        gt_rect(3, 2, 2, 2, 2, 10, 8),
        gt_rect(4, 2, 1, 20, 10, 40, 30),
        gt_rect(5, 4, 3, 4, 4, 6, 6),
        gt_rect(6, 5, 1, 2, 2, 90, 90),  # large
        gt_rect(7, 5, 2, 50, 50, 40, 40),
    ]
    return lvis_dataset(images, anns, CATS)


def edge_case_results() -> list[dict]:
    dets = [
        det_rect(1, 1, 0.95, 5, 4, 20, 20),  # TP on image 1 (IoU 0.9)
        det_rect(1, 1, 0.40, 31, 33, 28, 26),  # looser TP
        det_rect(1, 1, 0.85, 40, 2, 10, 10),  # FP
        det_rect(1, 2, 0.90, 0, 0, 12, 12),  # negative category: a real FP for cat 2
        det_rect(1, 5, 0.99, 4, 4, 20, 20),  # category neither positive nor negative: ignored
        det_rect(1, 4, 0.80, 4, 4, 20, 20),  # negative, and category 4 has no GT in the split
        det_rect(2, 1, 0.70, 0, 30, 12, 12, 48, 64),  # unmatched on a not-exhaustive category: ignored
        det_rect(2, 1, 0.60, 21, 11, 38, 28, 48, 64),  # matched on a not-exhaustive category: counts
        det_rect(2, 2, 0.75, 2, 2, 10, 7, 48, 64),
        det_rect(2, 3, 0.50, 2, 2, 10, 8, 48, 64),  # negative for image 2
        det_rect(3, 1, 0.65, 10, 10, 20, 20),  # negative on an image without GT
        det_rect(3, 4, 0.55, 10, 10, 20, 20),
        det_rect(5, 1, 0.90, 4, 4, 85, 85, 96, 96),
        det_rect(5, 2, 0.30, 52, 50, 38, 40, 96, 96),
        det_rect(5, 2, 0.35, 0, 0, 20, 20, 96, 96),
    ]
    # > 300 detections on image 5: 300 mid-score boxes push the low-score TP out of the cap.
    dets += [det_rect(5, 1, 0.5 + i * 1e-4, 60, 0, 8 + i % 5, 8, 96, 96) for i in range(300)]
    dets.append(det_rect(5, 2, 0.01, 50, 50, 40, 40, 96, 96))  # exact match, but rank 318 on image 5
    return dets


def random_case(seed: int, num_images: int = 12) -> tuple[dict, list[dict]]:
    """Random rectangles: 8 categories, jittered detections, negatives, not-exhaustive, ties."""
    rng = np.random.default_rng(seed)
    cats = [lvis_category(c, "rcf"[c % 3]) for c in range(1, 9)]
    images, anns, dets = [], [], []
    for img in range(1, num_images + 1):
        h, w = int(rng.integers(40, 97)), int(rng.integers(40, 97))
        pos = rng.choice(np.arange(1, 9), size=int(rng.integers(0, 3)), replace=False)
        rest = np.setdiff1d(np.arange(1, 9), pos)
        neg = rng.choice(rest, size=2, replace=False)
        images.append(
            lvis_image(img, h, w, neg=neg.tolist(), not_exhaustive=pos[:1].tolist() if img % 4 == 0 else [])
        )
        for _ in range(int(rng.integers(0, 5)) if len(pos) else 0):
            cat = int(rng.choice(pos))
            bw, bh = int(rng.integers(3, w // 2)), int(rng.integers(3, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            anns.append(gt_rect(len(anns) + 1, img, cat, x, y, bw, bh))
            for _ in range(int(rng.integers(1, 4))):
                dx, dy = rng.integers(-3, 4, 2)
                x2, y2 = int(np.clip(x + dx, 0, w - bw)), int(np.clip(y + dy, 0, h - bh))
                dets.append(det_rect(img, cat, round(float(rng.uniform()), 2), x2, y2, bw, bh, h, w))
        for _ in range(int(rng.integers(0, 6))):
            cat = int(rng.integers(1, 9))
            bw, bh = int(rng.integers(3, w // 2)), int(rng.integers(3, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            dets.append(det_rect(img, cat, round(float(rng.uniform()), 2), x, y, bw, bh, h, w))
    return lvis_dataset(images, anns, cats), dets


def api_mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """boundary-iou-api's ``mask_to_boundary``, transcribed line by line with numpy for cv2:

        dilation = max(1, int(round(dilation_ratio * sqrt(h^2 + w^2))))
        new_mask = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        new_mask_erode = cv2.erode(new_mask, np.ones((3, 3)), iterations=dilation)
        return mask - new_mask_erode[1 : h + 1, 1 : w + 1]

    cv2.erode's own border (outside the padded image) never erodes: edge replication here.
    """
    h, w = mask.shape
    dilation = int(round(dilation_ratio * np.sqrt(h**2 + w**2)))
    dilation = max(dilation, 1)
    new_mask = np.pad(mask.astype(np.uint8), 1, constant_values=0)
    for _ in range(dilation):
        p = np.pad(new_mask, 1, mode="edge")
        new_mask = np.min([p[dy : dy + h + 2, dx : dx + w + 2] for dy in range(3) for dx in range(3)], axis=0)
    return mask.astype(np.uint8) - new_mask[1 : h + 1, 1 : w + 1]


def api_iou(dts, gts):
    """The API's LVIS/COCO evaluator with iou_type 'boundary': min(mask IoU, boundary IoU), every pair."""
    crowd = [0] * len(gts)
    d_rles = [d["segmentation"] for d in dts]
    g_rles = [g["segmentation"] for g in gts]

    def boundary(rle):
        m = mask_utils.decode(
            {**rle, "counts": rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]}
        )
        return mask_utils.encode(np.asfortranarray(api_mask_to_boundary(m)))

    mask_iou = np.asarray(mask_utils.iou(d_rles, g_rles, crowd)).reshape(len(dts), len(gts))
    b_iou = np.asarray(
        mask_utils.iou([boundary(r) for r in d_rles], [boundary(r) for r in g_rles], crowd)
    ).reshape(len(dts), len(gts))
    return np.minimum(mask_iou, b_iou)


def blob_case(
    seed: int,
    num_images: int = 10,
    *,
    size: tuple[int, int] = (30, 120),
    block: int = 6,
    thresh: float = 0.6,
    copies: int = 3,
    shift: int = 2,
):
    """Irregular masks (thresholded noise smoothed over ``block`` px, images of ``size`` px a side), many
    touching the image border, each with ``copies`` detections shifted by up to ``shift`` px."""
    from tests.helpers.lvis_reference import lvis_dataset as dataset

    rng = np.random.default_rng(seed)
    cats = [lvis_category(c, "rcf"[c % 3]) for c in range(1, 4)]
    images, anns, dets = [], [], []
    for img in range(1, num_images + 1):
        h, w = int(rng.integers(*size)), int(rng.integers(*size))
        images.append(lvis_image(img, h, w, neg=[3]))
        for _ in range(int(rng.integers(1, 4))):
            cat = int(rng.integers(1, 3))
            noise = rng.normal(size=(h // block + 2, w // block + 2))
            field = np.kron(noise, np.ones((block, block)))[:h, :w]
            m = (field > thresh).astype(np.uint8)
            if not m.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(m))
            x, y, bw, bh = mask_utils.toBbox(rle).tolist()
            seg = {"size": [h, w], "counts": rle["counts"].decode()}
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "segmentation": seg,
                         "area": float(m.sum()), "bbox": [x, y, bw, bh]})  # fmt: skip
            for _ in range(copies):
                dy, dx = rng.integers(-shift, shift + 1, 2)
                shifted = np.roll(np.roll(m, dy, 0), dx, 1)
                drle = mask_utils.encode(np.asfortranarray(shifted))
                score = round(float(rng.uniform()), 3)
                seg = {"size": [h, w], "counts": drle["counts"].decode()}
                dets.append({"image_id": img, "category_id": cat, "score": score, "segmentation": seg})
    return dataset(images, anns, cats), dets


# ------------------------------------------------------------- malformed results (validate, fast_eval)
def dets() -> list[dict]:
    return edge_case_results()[:14]


def mutated(fn, bbox: bool = True):
    d = dets() if bbox else without_bbox(dets())
    out = fn(d)
    return d if out is None else out


def _extra_run(d):
    d[2]["segmentation"]["counts"] += "1"  # one more run than the 64x64 image holds


CASES = {
    "not a list": (lambda d: {"annotations": d}, "results must be a json list of detections"),
    "not an object": (lambda d: [*d[:3], 5, *d[4:]], "result 3 is a json int, not an object"),
    "unknown image id": (lambda d: d[2].update(image_id=77), "1 image ids not in"),
    "another split": (lambda d: [dict(x, image_id=x["image_id"] + 500) for x in d], "for another split"),
    "unknown category id": (
        lambda d: d[2].update(category_id=9999),
        "1 category ids not in the category table",
    ),
    "score not a number": (lambda d: d[2].update(score="high"), "result 2 has score 'high'"),
    "bbox not 4 numbers": (lambda d: d[2].update(bbox=[1, 2, 3]), "result 2: bbox must be [x, y, w, h]"),
    "bbox negative side": (lambda d: d[2].update(bbox=[1, 2, -3, 4]), "has a negative width or height"),
    "bbox on some only": (lambda d: d[:3] + without_bbox(d[3:]), "3 of 14 results have 'bbox'"),
    "segmentation on some only": (
        lambda d: d[2].pop("segmentation") and None,
        "13 of 14 results have 'segmentation'",
    ),
    "segmentation not RLE": (
        lambda d: d[2].update(segmentation=[[0, 0, 5, 0, 5, 5]]),
        "result 2: segmentation must be compressed RLE",
    ),
    "RLE size differs": (lambda d: d[2]["segmentation"].update(size=[32, 32]), "RLE size [32, 32] differs"),
    "RLE foreign characters": (
        lambda d: d[2]["segmentation"].update(counts="~~~~"),
        "result 2: segmentation is not valid compressed RLE",
    ),
    "RLE cut mid-number": (
        lambda d: d[2]["segmentation"].update(counts="0" + "R" * 40),
        "result 2: segmentation is not valid compressed RLE",
    ),
    "RLE runs beyond h*w": (_extra_run, "result 2: segmentation is not valid compressed RLE"),
    # issue 22 item 16: both sides negative (w * h > 0 hid it), runs covering 2 of 4096 pixels
    "bbox two negative sides": (
        lambda d: d[2].update(bbox=[10, 20, -3, -4]),
        "has a negative width or height",
    ),
    "string image id": (
        lambda d: d[2].update(image_id="1"),
        "1 image ids not in",
    ),
    "no score": (lambda d: d[2].pop("score") and None, "result 2 has score None"),
    "RLE runs short of h*w": (
        lambda d: d[2]["segmentation"].update(counts="11"),
        "result 2: segmentation runs cover 2 of the 64x64 = 4096 pixels",
    ),
}
