"""Where pretrained weights come from, without ever touching the network (DESIGN.md "Features").

Order for a model name such as "resnet101", "vgg19", "fasterrcnn_resnet50_fpn" or "deepid":
  1. a file in `weights_dir`: `<name>.pth` / `<name>.pt`, or any file whose name starts with the stem of
     torchvision's weight file (e.g. `resnet18-f37072fd*`)          -> provenance "sha256:<hex of the file>"
  2. torchvision's cache: `torch.hub.get_dir()/checkpoints/<torchvision filename>`
                                                                     -> provenance "pretrained:<weights enum>"
  3. nothing                                                         -> (None, "random-init") and a warning.
Files are read with `torch.load(map_location="cpu", weights_only=True)`; torchvision's own
`get_state_dict` is never called because it downloads when the file is missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch

from asrn.errors import AsrnError

logger = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
_FILE_SUFFIXES = (".pth", ".pt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")  # common checkpoint layouts


class WeightsError(AsrnError):
    """A weights file that exists but cannot be read as a state dict; the message names the file."""


def weights_help(names: str) -> str:
    """The hint printed when weights are missing: how a user supplies them."""
    return (f"no pretrained weights found for {names}; using deterministic random init (provenance "
            f"'random-init'). Supply them as <weights-dir>/<name>.pth (or the torchvision file name), "
            f"or put torchvision's files in {Path(torch.hub.get_dir()) / 'checkpoints'}")


def torchvision_weights(name: str) -> list:
    """The torchvision weight enums of a model name (best first); [] for names torchvision lacks."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(name)
    except (ValueError, KeyError):
        return []
    default = getattr(enum, "DEFAULT", None)
    members = list(enum)
    # DEFAULT first, then the others: any of them in the cache is a real pretrained net.
    return ([default] if default is not None else []) + [w for w in members if w is not default]


def _file_name(weights) -> str:
    return os.path.basename(weights.url)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file, unwrapping `{"state_dict": ...}`-style checkpoints and `module.` prefixes."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles of whole models, truncated files, non-torch files
        raise WeightsError(f"{path}: not a loadable state dict ({type(e).__name__}: {e})") from e
    for key in _WRAPPER_KEYS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsError(f"{path}: expected a dict of tensors (a state dict)")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def find_weights_file(name: str, weights_dir: Path | None) -> Path | None:
    """`<name>.pth`/`.pt` in weights_dir, else a file named after torchvision's weight file."""
    if weights_dir is None or not Path(weights_dir).is_dir():
        return None
    weights_dir = Path(weights_dir)
    for suffix in _FILE_SUFFIXES:
        if (weights_dir / f"{name}{suffix}").is_file():
            return weights_dir / f"{name}{suffix}"
    stems = [Path(_file_name(w)).stem for w in torchvision_weights(name)]
    for path in sorted(weights_dir.iterdir()):
        if path.is_file() and any(path.name.startswith(stem) for stem in stems):
            return path
    return None


def resolve_weights(name: str, weights_dir: Path | None, warn: bool = True) -> tuple[dict | None, str]:
    """(state dict or None, provenance) for a model name; never downloads, never hangs.

    `warn=False` lets a caller that resolves several names emit one combined warning instead.
    """
    path = find_weights_file(name, weights_dir)
    if path is not None:
        return load_state_dict_file(path), f"sha256:{sha256_file(path)}"
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for weights in torchvision_weights(name):
        cached = checkpoints / _file_name(weights)
        if cached.is_file():
            return load_state_dict_file(cached), f"pretrained:{weights}"
    if warn:
        message = weights_help(name)
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
    return None, RANDOM_INIT
