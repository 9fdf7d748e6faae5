"""Where ``model.backbone.weights`` points: a named ImageNet checkpoint or a local file.

* ``torchvision://resnet50`` (optionally ``.IMAGENET1K_V2``): torchvision's weights enum, fetched into torch
  hub's cache (``$TORCH_HOME/hub/checkpoints``) by ``torch.hub.download_url_to_file``. Without an enum
  member the name means ``IMAGENET1K_V1``, the weights ``torchvision://`` names in mmcv (the paper's era).
* ``timm://resnest101e``: timm's pretrained tag (``resnest101e`` -> ``timm/resnest101e.in1k`` on the
  Hugging Face hub), fetched into the Hugging Face cache by ``huggingface_hub`` as timm itself does
  (``model.safetensors`` first, then ``pytorch_model.bin``).
* ``none``: no ImageNet weights, said explicitly; anything else is a local file.

Offline (``LVISCTL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``, or no network) a missing cache entry is one line that
names the file to place and where. Nothing here loads a tensor: the caller reads the returned file.
"""

from __future__ import annotations

import os
from pathlib import Path

from lvisctl.config import Config
from lvisctl.errors import LvisctlError

KEY = "model.backbone.weights"
NONE = "none"
_OFFLINE_VARS = ("LVISCTL_OFFLINE", "HF_HUB_OFFLINE")
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's order (safetensors alternative first)


def is_none(spec: str) -> bool:
    """True for the explicit ``none`` (train the trunk from scratch)."""
    return str(spec).strip().lower() == NONE


def without_backbone_weights(cfg: Config) -> Config:
    """``cfg`` for a model whose every weight comes from a checkpoint: the ImageNet trunk is not read (it
    may not exist, or not be downloadable, where stage 2 or inference runs)."""
    if not str(cfg.model.backbone.weights or "").strip():
        return cfg
    out = cfg.to_dict()
    out["model"]["backbone"]["weights"] = ""
    return Config.wrap(out)


def offline() -> bool:
    """The user said there is no network (lvisctl's own switch or the Hugging Face one)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in _OFFLINE_VARS)


def resolve_weights(spec: str) -> Path | None:
    """The local file ``spec`` names (downloaded into the library's cache if needed); None for ``none``."""
    text = str(spec).strip()
    if not text:
        raise LvisctlError(
            f"{KEY}: empty; name ImageNet weights (torchvision://resnet50, timm://resnest101e or a file) "
            f"or say {KEY}=none to train the trunk from scratch"
        )
    if is_none(text):
        return None
    if text.startswith("torchvision://"):
        return _torchvision_file(text.removeprefix("torchvision://"))
    if text.startswith("timm://"):
        return _timm_file(text.removeprefix("timm://"))
    return Path(text).expanduser()


def _torchvision_file(name: str) -> Path:
    import torch.hub
    from torchvision.models import get_model_weights

    model, _, member = name.partition(".")
    try:
        enum = get_model_weights(model)
    except (ValueError, KeyError):
        raise LvisctlError(f"{KEY}: torchvision has no model {model!r} (torchvision://{name})") from None
    members = {m.name.lower(): m for m in enum}
    chosen = members.get((member or "IMAGENET1K_V1").lower())
    if chosen is None:
        raise LvisctlError(
            f"{KEY}: torchvision://{name}: no weights {member!r} for {model} (choose from "
            f"{', '.join(m.name for m in enum)})"
        )
    url = chosen.url
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    if not offline():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(target), progress=False)
            return target
        except OSError:  # URLError is an OSError: no network / proxy refused
            pass
    raise LvisctlError(
        f"{KEY}: torchvision://{name} is not cached and cannot be downloaded here: place {url} as {target}"
    )


def _timm_file(tag: str) -> Path:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tag)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise LvisctlError(f"{KEY}: timm has no pretrained weights on the Hugging Face hub for {tag!r}")
    repo, _, revision = repo.partition("@")
    cache = _hf_cache_dir()
    cached = _hf_cached(repo, revision or None, cache)
    if cached is not None:
        return cached
    if not offline():
        fetched = _hf_download(repo, revision or None, cache)
        if fetched is not None:
            return fetched
    raise LvisctlError(
        f"{KEY}: timm://{tag} is not in the Hugging Face cache {cache} and cannot be downloaded here: "
        f"place {_HF_FILES[0]} from https://huggingface.co/{repo} there "
        f"(huggingface-cli download {repo} {_HF_FILES[0]} --cache-dir {cache}) or set {KEY}=FILE"
    )


def _hf_cache_dir() -> Path:
    """huggingface_hub's cache rule, read now (its constants were fixed when it was first imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def _hf_cached(repo: str, revision: str | None, cache: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in _HF_FILES:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _hf_download(repo: str, revision: str | None, cache: Path) -> Path | None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    for filename in _HF_FILES:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache))
        except EntryNotFoundError:
            continue
        except (OSError, HfHubHTTPError):  # no network (LocalEntryNotFoundError), refused, gated
            return None
    return None
