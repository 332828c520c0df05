"""Where pretrained weights come from, never hanging on the network (README.md "Pretrained weights"); fetching.

Order for a model name such as "resnet101", "vgg19", "fasterrcnn_resnet50_fpn" or "deepid":
  1. a file in `weights_dir`: `<name>.pth` / `<name>.pt`, or any file whose name starts with the stem of
     torchvision's weight file (e.g. `resnet18-f37072fd*`)          -> provenance "sha256:<hex of the file>"
  2. torchvision's cache: `torch.hub.get_dir()/checkpoints/<torchvision filename>`
                                                                     -> provenance "pretrained:<weights enum>"
  3. nothing                                                         -> (None, "random-init") and a warning.
Files are read with `torch.load(map_location="cpu", weights_only=True)`; torchvision's own
`get_state_dict` is never called because it downloads when the file is missing.

Only `download_weights` (behind `asrn weights fetch`) goes online: it puts torchvision's files where step 1 or 2
finds them, with a timeout, checking the sha256 prefix in each file's name, and says in one line what it could
not reach and how to place the files by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from asrn.errors import AsrnError

logger = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
DOWNLOAD_TIMEOUT = 30.0  # seconds a download may wait for the server before it gives up
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")  # torchvision's files: <name>-<sha256 prefix>.pth
_FILE_SUFFIXES = (".pth", ".pt")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")  # common checkpoint layouts


class WeightsError(AsrnError):
    """A weights file that exists but cannot be read as a state dict; the message names the file."""


class WeightsFetchError(AsrnError):
    """A download of pretrained weights that failed; names the URL, and how to place the files by hand."""


def cache_dir() -> Path:
    """torchvision's cache of weight files: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_help(names: str) -> str:
    """The hint printed when weights are missing: how a user supplies them."""
    return (f"no pretrained weights found for {names}; using deterministic random init (provenance "
            f"'random-init'). Supply them as <weights-dir>/<name>.pth (or the torchvision file name), "
            f"or put torchvision's files in {cache_dir()} (`asrn weights fetch` downloads them)")


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


def locate_weights(name: str, weights_dir: Path | None) -> tuple[Path, str | None] | None:
    """(file, its torchvision weights name when found in the cache) that resolve_weights would load, without
    loading it; None when the model would be randomly initialised."""
    path = find_weights_file(name, weights_dir)
    if path is not None:
        return path, None
    for weights in torchvision_weights(name):
        cached = cache_dir() / _file_name(weights)
        if cached.is_file():
            return cached, str(weights)
    return None


def resolve_weights(name: str, weights_dir: Path | None, warn: bool = True) -> tuple[dict | None, str]:
    """(state dict or None, provenance) for a model name; never downloads, never hangs.

    `warn=False` lets a caller that resolves several names emit one combined warning instead.
    """
    found = locate_weights(name, weights_dir)
    if found is not None:
        path, cached = found
        return load_state_dict_file(path), f"pretrained:{cached}" if cached else f"sha256:{sha256_file(path)}"
    if warn:
        message = weights_help(name)
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
    return None, RANDOM_INIT


def default_weights_url(name: str) -> str | None:
    """Where torchvision serves a model name's default weights (e.g. .../resnet18-f37072fd.pth); None when
    torchvision has none (deepid, a user's *_flow net)."""
    weights = torchvision_weights(name)
    return weights[0].url if weights else None


def download_weights(urls: Sequence[str], directory: Path | None = None,
                     timeout: float = DOWNLOAD_TIMEOUT) -> list[Path]:
    """Download weight files into `directory` (default: torchvision's cache), skipping those already there.

    Each file goes to a temporary name first and is kept only when its sha256 starts with the prefix in its name
    (torchvision's convention). The first URL that cannot be reached stops the fetch with a one-line
    WeightsFetchError naming it, the files still missing and where to put them by hand; nothing half-written stays.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WeightsFetchError(f"{directory}: cannot create the folder ({e})") from e
    names = [os.path.basename(url) for url in urls]
    paths = []
    for index, (url, name) in enumerate(zip(urls, names, strict=True)):
        target = directory / name
        if target.is_file():
            print(f"weights: {name}: already in {directory}", file=sys.stderr, flush=True)
            paths.append(target)
            continue
        print(f"weights: {name}: downloading {url}", file=sys.stderr, flush=True)
        try:
            size = _download(url, target, timeout)
        except WeightsFetchError:
            raise
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, ValueError) as e:
            missing = ", ".join(names[index:])  # ValueError: a URL urllib cannot open
            raise WeightsFetchError(
                f"cannot reach {url} ({type(e).__name__}: {_one_line(e)}): offline or blocked? Place the files by "
                f"hand: download {missing} from {os.path.dirname(url)}/ on a machine that is online and copy them "
                f"into {directory}" + ("" if directory == cache_dir() else " (then pass --weights-dir to extract "
                                       "and predict)")) from e
        except OSError as e:  # the local side: permissions, a full disk
            raise WeightsFetchError(f"{target}: cannot write the download ({e})") from e
        print(f"weights: {name}: {size / 2**20:.1f} MiB in {directory}", file=sys.stderr, flush=True)
        paths.append(target)
    return paths


def _download(url: str, target: Path, timeout: float) -> int:
    """url -> target through a temporary file in the same folder; checks the sha256 prefix in the file's name."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(temporary, "wb") as f:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        expected = _HASH_IN_NAME.search(target.name)
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise WeightsFetchError(f"{url}: downloaded {size} bytes whose sha256 {digest.hexdigest()[:12]}... does "
                                    f"not start with {expected.group(1)} (the hash in the file name): a corrupt "
                                    f"download or a proxy's error page; nothing was kept")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return size


def _one_line(error: BaseException) -> str:
    reason = None if isinstance(error, urllib.error.HTTPError) else getattr(error, "reason", None)  # the socket's
    text = str(reason if reason is not None else error).strip() or type(error).__name__
    return " ".join(text.split())[:200]
