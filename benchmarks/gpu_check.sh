#!/usr/bin/env bash
# A prepared GPU check: one command, under 8 minutes on one GPU, needs no network.
#
#   benchmarks/gpu_check.sh                    # on a CUDA machine (the first visible GPU)
#   benchmarks/gpu_check.sh --cpu              # tiny sizes on the CPU: what tests/integration/test_gpu_check.py runs
#   benchmarks/gpu_check.sh --wheels DIR       # first install what the python lacks from DIR (`make gpu-wheels`)
#
# The python: $PYTHON when set, else the repository's .venv (what `make install` made) when it exists, else
# `python` from the PATH. --wheels DIR installs the packages of DIR that this python does not have yet, from DIR
# only (pip --no-index), with torch, torchvision and numpy held at their installed versions; without
# --wheels nothing is installed. A machine with torch, torchvision, timm, numpy, typer and rich needs
# nothing else than a copy of the repository and that folder.
#
# Prints one table (markdown) with:
#   * train seconds/iteration, r50-FPN Mask R-CNN, batch 2 at 800x1333, AMP off and on: lvisctl's model
#     next to torchvision's maskrcnn_resnet50_fpn on the same input (both trainable BN, random init,
#     torchvision's resize disabled), steps interleaved; peak GPU memory per row
#   * the stage-2 HM head's cost: a stage-2-like step (backbone + RPN frozen) with and without HM
#   * inference images/s at 300 detections per image, model + mask thresholding + RLE records
#   * post-processing alone (paste + threshold + RLE) on the device: lvisctl vs the obvious way
#   * a 20-iteration loss on one fixed batch that must decrease (the check fails otherwise)
#   * short runs (s/iter, AMP) of HTC, EQL, BAGS, Mask Scoring and DCN
#   * multi-scale training (a new input shape every step) with cudnn.benchmark off and on
#   * peak memory of a batch with LVIS-like instance counts (300 GT masks per image, a Mosaic canvas)
#   * host syncs per train step and per inference image (torch.cuda.set_sync_debug_mode; --cpu: counted)
# then trains the demo model 20 iterations on synthetic 1024 px LVIS through the CLI, runs
# tta-infer (two scales) and evaluate on it; on that checkpoint: inference images/s and AP with AMP on
# and off; then a 2-process torchrun run (NCCL with 2 GPUs, else gloo on the CPU) with evaluation during
# training, a Ctrl-C sent mid-run, --resume, and tta-infer --tta paper. All rows end in one table.
# Any error (a CUDA error included) exits non-zero.
#
# Environment: PYTHON (see above), GPU_CHECK_WORKDIR (default: a temporary folder, removed).
set -euo pipefail

usage() {
    echo "usage: $0 [--cpu] [--wheels DIR]" >&2
    exit 2
}
MODE=cuda
WHEELS=
while [[ $# -gt 0 ]]; do
    case $1 in
        --cpu) MODE=cpu; shift ;;
        --wheels) [[ $# -ge 2 ]] || usage; WHEELS=$2; shift 2 ;;
        *) usage ;;
    esac
done
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -n "${PYTHON:-}" ]]; then
    PY=$PYTHON
elif [[ -x "$REPO/.venv/bin/python" ]]; then
    PY=$REPO/.venv/bin/python  # after `make install`, without activating the venv
else
    PY=python
fi
if [[ -n $WHEELS ]]; then
    if [[ ! -d $WHEELS ]] || ! compgen -G "$WHEELS/*.whl" >/dev/null; then
        echo "error: $WHEELS: not a folder of wheels (make gpu-wheels builds one)" >&2
        exit 2
    fi
    # torch and its companions stay as they are: pip may only add what is missing, never replace them.
    HELD=$(mktemp -t lvisctl-gpu-check-held-XXXXXX)
    "$PY" -c 'import importlib.metadata as m
for d in ("torch", "torchvision", "numpy"):
    try: print(f"{d}=={m.version(d)}")
    except m.PackageNotFoundError: pass' >"$HELD"
    NAMES=$(for w in "$WHEELS"/*.whl; do basename "$w" | cut -d- -f1; done | sort -u)
    echo "== installing what $PY lacks from $WHEELS (offline; held: $(tr '\n' ' ' <"$HELD"))"
    # shellcheck disable=SC2086  # one argument per package name
    "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" -c "$HELD" $NAMES
    rm -f "$HELD"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${GPU_CHECK_WORKDIR:-}" ]]; then
    WORK=$GPU_CHECK_WORKDIR
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d -t lvisctl-gpu-check-XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi
START=$SECONDS
cd "$REPO"

echo "== lvisctl gpu check ($MODE), work dir $WORK"
"$PY" - "$MODE" "$WORK" <<'PY'
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import train_speed as ts  # the benchmark's model builders (same models as its tables)

MODE = sys.argv[1]
CUDA = MODE == "cuda"
if CUDA and not torch.cuda.is_available():
    sys.exit("error: no CUDA device visible (use --cpu for the tiny CPU check)")
DEV = torch.device("cuda" if CUDA else "cpu")
H, W = (800, 1333) if CUDA else (64, 96)
CLASSES = 1203 if CUDA else 8
WARMUP, ITERS = (3, 10) if CUDA else (0, 1)
# --cpu checks the script, not the speed: lvisctl's model shrunk to the tests' tiny size (torchvision's
# stays r50: it has no smaller variant), one timed step per row.
SMALL = [] if CUDA else [
    "model.backbone.name=tiny", "model.backbone.tiny_width=8", "model.fpn.out_channels=16",
    "model.roi_heads.fc_dim=32", "model.mask_head.conv_dim=16",
]  # fmt: skip
MODEL = "r50-FPN" if CUDA else "tiny lvisctl / r50 torchvision"
torch.manual_seed(0)
if CUDA:
    torch.backends.cudnn.benchmark = True
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)


def batch(n=2, instances=8 if CUDA else 2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        xy = torch.rand(instances, 2, generator=g) * torch.tensor([W / 2, H / 2])
        wh = (torch.rand(instances, 2, generator=g) * 0.4 + 0.1) * torch.tensor([W, H])
        boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([W - 1.0, H - 1.0]))], 1)
        masks = torch.zeros(instances, H, W, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            m[y1:y2, x1:x2] = 1
        labels = torch.randint(1, CLASSES + 1, (instances,), generator=g)
        images.append(torch.rand(3, H, W, generator=g).to(DEV))
        targets.append({"boxes": boxes.to(DEV), "labels": labels.to(DEV), "masks": masks.to(DEV)})
    return images, targets


def sync():
    if CUDA:
        torch.cuda.synchronize()


def step_fn(model, amp, lr=1e-3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    images, targets = batch()

    def step():
        sync()
        start = time.perf_counter()
        with torch.autocast(DEV.type, dtype=torch.float16, enabled=amp):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 10.0)  # random init, 1,203 classes: keep the first steps sane
        scaler.step(opt)
        scaler.update()
        sync()
        return time.perf_counter() - start, float(loss.detach())

    return step


def freeze_stage2(model):
    for name, p in model.named_parameters():
        if name.startswith(("backbone", "rpn")):
            p.requires_grad_(False)
    return model


def timed(rows):
    """rows: label -> (builder, amp). Steps interleaved; median s/it and peak memory per row."""
    steps = {label: step_fn(build().to(DEV).train(), amp) for label, (build, amp) in rows.items()}
    peak = dict.fromkeys(rows, 0.0 if CUDA else None)
    times = {label: [] for label in rows}
    for r in range(WARMUP + ITERS):
        for label, step in steps.items():
            if CUDA:
                torch.cuda.reset_peak_memory_stats()
            t, _ = step()
            if CUDA:
                peak[label] = max(peak[label], torch.cuda.max_memory_allocated() / 2**30)
            if r >= WARMUP:
                times[label].append(t)
    return {label: (statistics.median(times[label]), peak[label]) for label in rows}


ROWS = os.path.join(sys.argv[2], "rows.tsv")  # every part of the check appends; printed once at the end


def add(what, value, memory=None):
    with open(ROWS, "a", encoding="utf-8") as fh:
        fh.write(f"{what}\t{value}\t{'-' if memory is None else f'{memory:.2f}'}\n")
    print(f"  {what}: {value}", flush=True)


core = lambda over=(): ts.build_core(CLASSES, [*SMALL, *over])  # noqa: E731
tv = lambda: ts.build_torchvision(CLASSES)  # noqa: E731
amps = (False, True) if CUDA else (False,)
for amp in amps:
    res = timed({"lvisctl": (core, amp), "torchvision": (tv, amp)})
    tag = "AMP on" if amp else "AMP off"
    for label, (t, mem) in res.items():
        add(f"train s/iter, {MODEL} batch 2 {H}x{W}, {tag}: {label}", f"{t:.3f}", mem)
    add(f"lvisctl / torchvision time, {tag}", f"{res['lvisctl'][0] / res['torchvision'][0]:.2f}x")
if not CUDA:
    add("train s/iter, AMP on", "n/a (AMP is CUDA-only, as in the trainer)")

res = timed(
    {
        "stage-2 step, plain heads": (lambda: freeze_stage2(core()), CUDA),
        "stage-2 step, HM heads": (lambda: freeze_stage2(core(ts.HM)), CUDA),
    }
)
for label, (t, mem) in res.items():
    add(f"{label} s/iter", f"{t:.3f}", mem)
plain, hm = res["stage-2 step, plain heads"][0], res["stage-2 step, HM heads"][0]
add("HM head cost (stage-2 step)", f"+{hm - plain:.3f} s/iter ({hm / plain - 1:+.0%})")

# Inference at 300 detections per image, with mask thresholding and RLE records.
from lvisctl.data.categories import CategoryMap
from lvisctl.inference.results import detections_to_records

over = ["inference.score_thresh=0.0", "inference.detections_per_image=300"]
model = core(over).to(DEV).eval()
images, _ = batch(n=4 if CUDA else 2, seed=1)
cmap = CategoryMap(range(1, CLASSES + 1))
if CUDA:
    torch.cuda.reset_peak_memory_stats()
times, dets = [], 0
with torch.no_grad(), torch.autocast(DEV.type, dtype=torch.float16, enabled=CUDA):
    for k in range(2 if CUDA else 1):  # the first pass warms up
        sync()
        start = time.perf_counter()
        for image in images:
            # as tta-infer: RoI-level masks, pasted in their boxes and encoded (on the GPU under CUDA)
            out = model([image], paste_masks=False)[0]
            recs = detections_to_records(1, {**out, "image_size": tuple(image.shape[-2:])}, cmap)
            dets += len(recs) if k else 0
        sync()
        times.append(time.perf_counter() - start)
mem = torch.cuda.max_memory_allocated() / 2**30 if CUDA else None
per_image = dets / len(images)
add(f"inference img/s at {H}x{W}, {per_image:.0f} dets/img, with RLE records", f"{len(images) / times[-1]:.2f}", mem)

# Post-processing alone on the device: 300 RoI masks pasted, thresholded, RLE-encoded.
from postprocess_speed import fast, obvious, workload

NPOST = 300 if CUDA else 20
post = workload(NPOST, (H, W), device=DEV.type)
for name, fn in (("lvisctl postprocess", fast), ("obvious way", obvious)):
    fn(post)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    out_records = fn(post)
    sync()
    mem = torch.cuda.max_memory_allocated() / 2**30 if CUDA else None
    add(f"post-processing ms/img, {NPOST} dets at {H}x{W}, {DEV.type}: {name}", f"{1000 * (time.perf_counter() - start):.1f}", mem)
    if name == "lvisctl postprocess":
        fast_records = out_records
if fast_records != out_records:
    sys.exit("error: lvisctl post-processing differs from the obvious way")

# A 20-iteration loss on one fixed batch must decrease.
step = step_fn(core().to(DEV).train(), CUDA, lr=0.005)
losses = [step()[1] for _ in range(20)]
first, last = statistics.mean(losses[:5]), statistics.mean(losses[-5:])
add("20-iteration loss (mean of first 5 -> last 5)", f"{first:.3f} -> {last:.3f}")
if not all(map(lambda x: x == x and abs(x) != float("inf"), losses)) or not last < first:
    sys.exit(f"error: the loss did not decrease over 20 iterations: {losses}")

# Short runs of the Table 1/2 heads (AMP on CUDA): each must train (finite losses) at a sane speed.
HEADS = {
    "HTC": ["model.roi_heads.type=htc"],
    "EQL": ["model.roi_heads.cls_loss=eql"],
    "BAGS": ["model.roi_heads.cls_loss=bags"],
    "Mask Scoring": ["model.mask_head.mask_iou=true"],
    "DCN (stages 3-5)" if CUDA else "DCN (CPU: tiny trunk, no DCN)": ["model.backbone.dcn_stages=[3,4,5]"] if CUDA else [],
}
res = timed({name: (lambda o=over: core(o), CUDA) for name, over in HEADS.items()})
heads_res = res  # issue 28's step factors below reuse these timings
for name, (t, mem) in res.items():
    add(f"train s/iter, {name}, batch 2 {H}x{W}{', AMP' if CUDA else ''}", f"{t:.3f}", mem)

# Multi-scale training: a new input shape every step (short side 640..1024 as stage 1's jitter).
def multi_scale(bench):
    torch.backends.cudnn.benchmark = bench
    model = core().to(DEV).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sides = [640 + 32 * k for k in range(13)] if CUDA else [48, 64, 80]
    total = 0.0
    for side in sides:
        g = torch.Generator().manual_seed(side)
        image = torch.rand(3, side, side * 5 // 3, generator=g).to(DEV)
        box = torch.tensor([[side / 8, side / 8, side / 2, side / 2]], device=DEV)
        mask = torch.zeros(1, *image.shape[-2:], dtype=torch.uint8, device=DEV)
        mask[:, side // 8 : side // 2, side // 8 : side // 2] = 1
        target = {"boxes": box, "labels": torch.ones(1, dtype=torch.long, device=DEV), "masks": mask}
        sync()
        start = time.perf_counter()
        with torch.autocast(DEV.type, dtype=torch.float16, enabled=CUDA):
            loss = sum(model([image], [target]).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        total += time.perf_counter() - start
    return total / len(sides)


if CUDA:
    for bench in (False, True):
        add(f"multi-scale train s/iter (new shape each step), cudnn.benchmark {'on' if bench else 'off'}",
            f"{multi_scale(bench):.3f}")  # fmt: skip
    torch.backends.cudnn.benchmark = False  # the training default (runtime.cudnn_benchmark=auto)
else:
    add("multi-scale train s/iter, cudnn.benchmark off (CPU: no cudnn)", f"{multi_scale(False):.3f}")

# Peak memory at LVIS-like instance counts: 300 GT masks per image on a Mosaic-sized canvas.
MANY = 300 if CUDA else 12
model = core().to(DEV).train()
images, targets = batch(n=2, instances=MANY, seed=3)
if CUDA:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
with torch.autocast(DEV.type, dtype=torch.float16, enabled=CUDA):
    loss = sum(model(images, targets).values())
loss.backward()
sync()
mem = torch.cuda.max_memory_allocated() / 2**30 if CUDA else None
add(f"train step with {MANY} GT masks/image, batch 2 {H}x{W}: loss", f"{float(loss.detach()):.3f}", mem)
del model, images, targets, loss

# Host syncs: CUDA's own sync check (a warning per sync, counted); the CPU counts the same events.
import warnings

from sync_count import SyncCounter


class CudaSyncs:
    def __enter__(self):
        self._w = warnings.catch_warnings(record=True)
        self.log = self._w.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._w.__exit__(*exc)
        self.total = sum("synchroniz" in str(w.message) for w in self.log)


for name, over in {"softmax": [], **{k: v for k, v in HEADS.items() if k in ("HTC", "BAGS", "Mask Scoring")},
                   "sigmoid": ["model.roi_heads.cls_loss=sigmoid"]}.items():  # fmt: skip
    model = core([*over, "inference.score_thresh=0.0001"]).to(DEV)
    images, targets = batch(n=2, seed=4)
    model.train()
    with torch.autocast(DEV.type, dtype=torch.float16, enabled=CUDA):
        model(images, targets)  # warm-up (cudnn, allocator)
        with CudaSyncs() if CUDA else SyncCounter() as count:
            model(images, targets)
    model.eval()
    with torch.no_grad(), torch.autocast(DEV.type, dtype=torch.float16, enabled=CUDA):
        with CudaSyncs() if CUDA else SyncCounter() as image_count:
            model(images[:1], paste_masks=False)
    add(f"host syncs per train step (2 images) / per inference image, {name}", f"{count.total} / {image_count.total}")

# ---- issue 28 (docs/scale.md, benchmarks/full_run_cost.py): the step factors the full-run cost assumes --
# HTC, Mask Scoring and deformable convs relative to the plain core, on this device (CPU ratios stand in
# for them in the table until these rows are run on a GPU). The heads' timings are the rows above.
core_time = timed({"core": (core, CUDA)})["core"][0]
for label in [k for k in heads_res if k.startswith(("HTC", "Mask Scoring", "DCN (stages"))]:
    add(f"step factor vs core: {label} (full_run_cost.py)", f"{heads_res[label][0] / core_time:.2f}x")
# ---- end of issue 28's rows ----------------------------------------------------------------------------
sync()
PY

echo "== train 20 iterations (CLI), tta-infer, evaluate on synthetic LVIS"
if [[ $MODE == cuda ]]; then
    SIZE=1024; SCALES=800,1000; TRAIN_ITEMS=("device=cuda" "augment.train_scales=[800]" "augment.max_size=1333" "augment.mosaic.size=1024")
else
    SIZE=64; SCALES=64,80; TRAIN_ITEMS=("device=cpu" "augment.train_scales=[64]" "augment.max_size=96" "augment.mosaic.size=96"
        "model.backbone.tiny_width=8" "model.fpn.out_channels=16" "model.roi_heads.fc_dim=32" "model.mask_head.conv_dim=16"
        "model.mask_head.num_convs=1")
fi
RUN="$WORK/run"
VAL_IMAGES=$([[ $MODE == cuda ]] && echo 16 || echo 4)  # enough for an images/s row on the GPU
"$PY" -m lvisctl data synth --run-dir "$RUN" --preset tiny --image-size "$SIZE" --train-images 8 \
    --val-images "$VAL_IMAGES" --test-images 0 --unlabeled-images 0 >/dev/null
"$PY" -m lvisctl train --stage 1 --config configs/demo/stage1.yaml --run-dir "$RUN" solver.max_iter=20 \
    solver.warmup_iters=0 train.batch_size=2 train.num_workers=0 train.log_period=5 sampler.rfs_threshold=0.3 \
    "${TRAIN_ITEMS[@]}"
"$PY" -m lvisctl tta-infer --run-dir "$RUN" --images "$RUN/data/lvis_v1_val.json" --scales "$SCALES"
"$PY" -m lvisctl evaluate --run-dir "$RUN"

echo "== the trained checkpoint: inference images/s, AP with AMP on and off"
"$PY" - "$MODE" "$WORK" "$RUN" <<'PY'
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from lvisctl.data.image_io import read_image_tensor
from lvisctl.data.lvis import load_lvis
from lvisctl.engine.checkpoint import load_checkpoint
from lvisctl.evaluation.lvis_metrics import evaluate_lvis, load_ground_truth, load_results_for_eval
from lvisctl.inference.factory import checkpoint_config, predictor_from_checkpoints
from lvisctl.inference.results import detections_to_records, write_split_results

mode, work, run = sys.argv[1], sys.argv[2], Path(sys.argv[3])
dev = torch.device("cuda" if mode == "cuda" else "cpu")
path = run / "checkpoints" / "stage1_final.pt"
ckpt = load_checkpoint(path)
predictor, stats = predictor_from_checkpoints([(ckpt, path)], checkpoint_config(ckpt), dev)
val = load_lvis(run / "data" / "lvis_v1_val.json")
images = {i: read_image_tensor(val.image_path(i)) for i in sorted(val.images)}
gt = load_ground_truth(run / "data" / "lvis_v1_val.json")


def predict(amp):
    predictor.amp = amp and dev.type == "cuda"
    records, start = [], time.perf_counter()
    for image_id, image in images.items():
        records += detections_to_records(image_id, predictor.predict(image), stats.category_map)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return records, len(images) / (time.perf_counter() - start)


def segm_ap(records):
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_split_results(records, Path(tmp) / "val.json")
        return evaluate_lvis(load_results_for_eval(paths["segm"], gt), gt, ("segm",))["segm"].metrics["AP"]


predict(True)  # warm-up
rows = []
for amp in (True, False):
    records, rate = predict(amp)
    tag = ("AMP on" if amp else "AMP off") + ("" if dev.type == "cuda" else " (CPU: AMP is CUDA-only)")
    rows.append((f"inference img/s, trained checkpoint, {len(images)} val images, {tag}", f"{rate:.2f}"))
    rows.append((f"segm AP of the trained checkpoint, {tag}", f"{segm_ap(records):.4f}" if records else "0 (no detections)"))
with open(os.path.join(work, "rows.tsv"), "a", encoding="utf-8") as fh:
    fh.writelines(f"{what}\t{value}\t-\n" for what, value in rows)
for what, value in rows:
    print(f"  {what}: {value}")
PY

echo "== 2-process torchrun: evaluation during training, Ctrl-C, --resume, tta-infer --tta paper"
"$PY" - "$MODE" "$WORK" "$PY" <<'PY'
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

mode, work, py = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
nccl = mode == "cuda" and torch.cuda.device_count() >= 2  # two ranks cannot share one GPU under NCCL
how = "NCCL, 2 GPUs" if nccl else "gloo on the CPU" + (" (1 GPU visible)" if mode == "cuda" else "")
run = work / "ddp"
items = ["device=cuda"] if nccl else [
    "device=cpu", "augment.train_scales=[64]", "augment.max_size=96", "augment.mosaic.size=96",
    "model.backbone.tiny_width=8", "model.fpn.out_channels=16", "model.roi_heads.fc_dim=32",
    "model.mask_head.conv_dim=16", "model.mask_head.num_convs=1",
]  # fmt: skip
val = run / "data" / "lvis_v1_val.json"
torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lvisctl"]
env = {**os.environ, "OMP_NUM_THREADS": "1"}


def sh(*cmd, **kw):
    subprocess.run(list(cmd), check=True, env=env, **kw)


sh(py, "-m", "lvisctl", "data", "synth", "--run-dir", str(run), "--preset", "tiny", "--image-size",
   "256" if nccl else "64", "--train-images", "16", "--val-images", "4", "--test-images", "0",
   "--unlabeled-images", "0", stdout=subprocess.DEVNULL)  # fmt: skip
train = [*torchrun, "train", "--stage", "1", "--config", "configs/demo/stage1.yaml", "--run-dir", str(run),
         "solver.max_iter=40", "solver.warmup_iters=0", "train.batch_size=2", "train.num_workers=0",
         "train.log_period=5", "train.checkpoint_period=5", "train.eval_period=10", f"data.val={val}",
         "sampler.rfs_threshold=0.3", *items]  # fmt: skip
# Ctrl-C as a terminal sends it: to torchrun, which passes it to both workers (SIGINT not ignored here)
log = open(work / "ctrl_c.log", "w", encoding="utf-8")  # torchrun prints its own traceback for a Ctrl-C
proc = subprocess.Popen(
    train, env=env, stderr=log, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
)
def saved():  # periodic checkpoints (the newest ones are kept): the highest iteration on disk
    return max((int(f.stem.rsplit("iter", 1)[1]) for f in run.glob("checkpoints/stage1_iter*.pt")), default=0)


deadline = time.time() + 300
while saved() < 10 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.1)
stopped = proc.poll() is None
if stopped:
    proc.send_signal(signal.SIGINT)
try:
    code = proc.wait(timeout=120)  # the ranks agree and stop within a step, well before torchrun's 30 s kill
except subprocess.TimeoutExpired:
    proc.kill()
    sys.exit("error: after Ctrl-C the torchrun workers did not stop within 120 s (a rank blocked?)")
log.close()
if not stopped and code != 0:
    sys.stderr.write((work / "ctrl_c.log").read_text()[-3000:])
    sys.exit(f"error: the 2-process run failed (exit {code}) before its iteration-10 checkpoint")
sh(*torchrun, "train", "--stage", "1", "--resume", "--run-dir", str(run))
# the paper's six scales and their box ranges on GPUs; two tiny scales without the ranges on the CPU
tiny = [] if nccl else ["--scales", "48,64", "inference.tta.range_filter=false"]
sh(*torchrun, "tta-infer", "--run-dir", str(run), "--images", str(val), "--tta", "paper", *tiny)
sh(py, "-m", "lvisctl", "evaluate", "--run-dir", str(run), stdout=subprocess.DEVNULL)
what = "stopped by Ctrl-C (exit %d), resumed to 40" % code if stopped else "finished before Ctrl-C, resume skipped"
with open(work / "rows.tsv", "a", encoding="utf-8") as fh:
    fh.write(f"2-process torchrun ({how}): eval every 10 it, Ctrl-C, --resume, --tta paper\tok: {what}\t-\n")
PY

"$PY" - "$WORK" <<'PY'
import sys

print("\n| check | value | peak GPU memory (GiB) |\n|---|---|---|")
with open(f"{sys.argv[1]}/rows.tsv", encoding="utf-8") as fh:
    for line in fh:
        what, value, mem = line.rstrip("\n").split("\t")
        print(f"| {what} | {value} | {mem} |")
PY
echo "== gpu check passed ($MODE) in $((SECONDS - START)) s"
