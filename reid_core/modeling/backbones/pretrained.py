"""Load public pretrained weights into a backbone, checking that every tensor lands somewhere.

Sources: a local path, a `file://` URL or an `http(s)://` URL (downloaded once into a cache:
`cache_dir`, else `$REIDFLOW_CACHE/weights`, else `~/.cache/reidflow/weights`). Formats:
`.safetensors`, or a torch file read with `weights_only=True` (plain tensors and containers
only: arbitrary pickled objects are refused, never executed).

The checkpoint is normalised before matching: nested `state_dict`/`model`/`module`/`net`
dicts are unwrapped, wrapper prefixes (`module.`, `backbone.`, `model.`, `base.`) stripped,
classifier keys (`fc.`, `classifier.`, `head.`, `heads.`) the backbone lacks dropped, then the
backbone's `remap` renames the rest. Rules once matched:

- a shape mismatch on a shared key is an error (naming the key and both shapes);
- a checkpoint sharing no key with the backbone is an error;
- every backbone tensor must be loaded, except those inside add-on modules that declare
  `pretrained_optional = True` (squeeze-excitation, non-local: a plain ImageNet checkpoint
  lacks them; they keep their initialisation) and BN `num_batches_tracked` counters (old
  checkpoints predate them). Those are listed in the report as `missing`; any other missing
  tensor is an error unless `allow_missing=True`;
- checkpoint keys with no place in the backbone are reported as `unexpected`, not an error.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from reid_core.modeling.backbones.registry import BACKBONES, StateDict
from reid_core.redact import redact

Remap = Callable[[StateDict, nn.Module], StateDict]

WRAPPER_KEYS = ("state_dict", "model", "module", "net")
WRAPPER_PREFIXES = ("module.", "backbone.", "model.", "base.")
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "heads.")


@dataclass(frozen=True)
class PretrainedReport:
    """What `load_pretrained` did: counts and key names, for logging and for tests."""

    source: str
    loaded: int  # backbone tensors overwritten from the checkpoint
    missing: tuple[str, ...]  # backbone tensors left at their initialisation (allowed ones)
    unexpected: tuple[str, ...]  # checkpoint tensors with no place in the backbone
    ignored: tuple[str, ...]  # dropped on purpose: classifier, outside the wrapper prefix


def default_cache_dir() -> Path:
    """`$REIDFLOW_CACHE/weights` if set, else `~/.cache/reidflow/weights`."""
    root = os.environ.get("REIDFLOW_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "reidflow"
    return base / "weights"


MAX_DOWNLOAD_BYTES = 2 * 1024**3  # no backbone's weights come near; more is not weights
DOWNLOAD_DEADLINE_S = 900.0  # the whole download, however slowly the server trickles


def resolve_source(source: str | Path, cache_dir: Path | None = None) -> Path:
    """Local file for `source`: a path, a `file://` URL, or an `http(s)://` URL (cached).

    A URL may pin its file with `#sha256=<hex>`: a download (or cached copy) with another
    digest is refused and not kept.
    """
    text = str(source)
    scheme = urllib.parse.urlparse(text).scheme.lower()
    if _downloaded(text):
        url, _, fragment = text.partition("#")
        pin = fragment.removeprefix("sha256=").lower() if fragment.startswith("sha256=") else ""
        if fragment and not re.fullmatch(r"[0-9a-f]{64}", pin):
            raise ValueError(f"{redact(text)}: the fragment must be #sha256=<64 hex digits>")
        return _download(url, Path(cache_dir) if cache_dir else default_cache_dir(), pin)
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(text).path))
    else:
        path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    return path


def _downloaded(source: str) -> bool:
    """Whether `source` is fetched over HTTP(S) into the cache."""
    return urllib.parse.urlparse(source).scheme.lower() in ("http", "https")


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _download(url: str, cache_dir: Path, pin: str = "") -> Path:
    """`url` in the cache (downloaded first when absent): at most MAX_DOWNLOAD_BYTES within
    DOWNLOAD_DEADLINE_S, with the digest `pin` when given; a refused file is not kept."""
    import time

    shown = redact(url)
    name = Path(urllib.parse.urlparse(url).path).name or "weights"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    # The URL's hash keeps two files with the same name from different places apart.
    target = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if target.is_file():
        if not pin or _sha256(target) == pin:
            return target
        target.unlink()  # a cached copy that no longer matches its pin
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{name}.", suffix=".part")
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise OSError(f"larger than {MAX_DOWNLOAD_BYTES:,} bytes")
                if time.monotonic() > deadline:
                    raise OSError(f"not done after {DOWNLOAD_DEADLINE_S:.0f} s")
                digest.update(chunk)
                out.write(chunk)
        if pin and digest.hexdigest() != pin:
            raise OSError(f"sha256 {digest.hexdigest()} is not the pinned {pin}")
        os.replace(tmp, target)  # atomic: a crash never leaves a truncated cached file
    except OSError as err:  # urllib's URLError/HTTPError included
        raise OSError(
            f"could not download pretrained weights from {shown}: {redact(str(err))}"
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def read_checkpoint(path: Path) -> object:
    """Raw checkpoint content: safetensors, or a torch file restricted to plain tensors."""
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects other than tensors; refusing to unpickle it "
            f"(weights_only=True): {str(err).splitlines()[0]}"
        ) from err


def _looks_like_safetensors(path: Path) -> bool:
    # safetensors: little-endian u64 header length, then a JSON header starting with '{'.
    if zipfile.is_zipfile(path):
        return False
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def extract_state_dict(checkpoint: object) -> tuple[StateDict, list[str]]:
    """Unwrap nested training checkpoints down to the tensors; returns (tensors, dropped keys)."""
    while isinstance(checkpoint, Mapping):
        wrapped = [k for k in WRAPPER_KEYS if isinstance(checkpoint.get(k), Mapping)]
        if not wrapped:
            break
        checkpoint = checkpoint[wrapped[0]]
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"checkpoint is a {type(checkpoint).__name__}, not a dict of tensors")
    tensors = {str(k): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    dropped = [str(k) for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not tensors:
        raise ValueError("checkpoint holds no tensors")
    return tensors, dropped


def _strip_wrappers(state: StateDict, own: set[str]) -> tuple[StateDict, list[str]]:
    """Strip wrapper prefixes, repeatedly (`module.backbone.`); keys outside one are dropped.

    A prefix is stripped only when the backbone has no module of that name and the keys under
    it match the backbone at least as well as the checkpoint does as it stands.
    """
    ignored: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if any(k.startswith(prefix) for k in own):
                continue
            inside = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if inside and len(own.intersection(inside)) >= len(own.intersection(state)):
                ignored += [k for k in state if not k.startswith(prefix)]
                state, changed = inside, True
    return state, ignored


def load_pretrained(
    backbone: nn.Module,
    source: str | Path,
    remap: Remap | None = None,
    cache_dir: Path | None = None,
    *,
    allow_missing: bool = False,
) -> PretrainedReport:
    """Load a public checkpoint into `backbone` in place (see the module docstring for rules).

    `remap(state_dict, backbone)` renames a foreign layout's keys to the backbone's;
    `allow_missing=True` accepts backbone tensors the checkpoint does not cover.
    """
    where = redact(str(source))  # a token in the URL never reaches a message
    path = resolve_source(source, cache_dir)
    try:
        state, ignored = extract_state_dict(read_checkpoint(path))
    except Exception:
        if _downloaded(str(source)):
            path.unlink(missing_ok=True)  # a downloaded file that is not weights is not kept
        raise
    target = backbone.state_dict()
    state, outside = _strip_wrappers(state, set(target))
    ignored += outside
    for key in list(state):
        if key not in target and key.startswith(CLASSIFIER_PREFIXES):
            ignored.append(key)
            del state[key]
    if remap is not None:
        state = remap(state, backbone)

    matched: StateDict = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if key not in target:
            unexpected.append(key)
            continue
        if tensor.shape != target[key].shape:
            raise ValueError(
                f"pretrained tensor '{key}' has shape {tuple(tensor.shape)} but the backbone "
                f"expects {tuple(target[key].shape)} ({where})"
            )
        matched[key] = tensor
    if not matched:
        raise ValueError(
            f"no tensor of {where} matches the backbone {type(backbone).__name__}: checkpoint "
            f"keys look like {sorted(state)[:3]}, the backbone's like {sorted(target)[:3]}"
        )

    optional = tuple(
        f"{name}."
        for name, module in backbone.named_modules()
        if name and getattr(module, "pretrained_optional", False)
    )
    missing = [k for k in target if k not in matched]
    required = [
        k for k in missing if not k.startswith(optional) and not k.endswith("num_batches_tracked")
    ]
    if required and not allow_missing:
        shown = ", ".join(required[:8])
        if len(required) > 8:
            shown += f" … ({len(required)} in all)"
        raise ValueError(
            f"{where} leaves backbone tensors uninitialised: {shown}; wrong layout or options? "
            f"(pass allow_missing=True to accept)"
        )
    backbone.load_state_dict(matched, strict=False)
    return PretrainedReport(
        source=where,
        loaded=len(matched),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        ignored=tuple(ignored),
    )


def load_backbone_weights(
    name: str,
    backbone: nn.Module,
    source: str | Path,
    cache_dir: Path | None = None,
    *,
    allow_missing: bool = False,
) -> PretrainedReport:
    """`load_pretrained` with the key remapping registered for backbone `name`."""
    return load_pretrained(
        backbone, source, BACKBONES.lookup(name).remap, cache_dir, allow_missing=allow_missing
    )
