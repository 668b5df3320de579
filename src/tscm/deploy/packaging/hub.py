"""torch.hub entry points and remote checkpoints: a checkpoint folder, local or published, as a ready model.

`load_model(source, role)` gives a `HubModel`: the checkpoint's network in eval mode with its
preprocessing attached (`transform`: one image → 3×H×W tensor; `describe(images)`: paths, PIL
images or uint8 arrays → N×D float32 L2-normalised descriptors). `hubconf.py` at the repository
root exposes it as `tscm_student` / `tscm_teacher`.

`source` is a checkpoint folder (model.safetensors + meta.json, e.g. one `tscm card` wrote), or a
published one: `hf://user/name[@revision]` (a Hugging Face model repository) or an http(s) URL
of the folder (or of its model.safetensors). A remote folder is fetched only when asked for, into
torch.hub's cache directory (`torch.hub.get_dir()/tscm/<digest of the URL>/`), and its
model.safetensors is checked against a SHA-256: the caller's `sha256`, else the one its model card
(README.md, as `tscm card` writes it) lists; without either nothing is loaded. A cached copy
whose SHA-256 still matches is used without the network. Offline, fetching fails with a message
saying to download the files elsewhere and pass the folder's path.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from tscm.data.images import as_rgb, eval_transform
from tscm.errors import TscmError
from tscm.evaluation.extract import InputSpec, describe_images
from tscm.fileio import atomic_path
from tscm.models.checkpoint import load_checkpoint

ROLES = ("student", "teacher")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
CARD_FILE = "README.md"
HF_ENDPOINT = "https://huggingface.co"
DOWNLOAD_TIMEOUT_S = 60
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# How a model card (tscm.deploy.packaging.model_card) lists a file's digest: "| `model.safetensors` | ... | `<hex>` |".
_CARD_DIGEST = r"`{name}`[^\n`]*\|[^\n`]*`([0-9a-f]{{64}})`"


class DescriptorTransform:
    """One image (path, PIL image or H×W×3 uint8 array) → the model's 3×H×W float input tensor.

    Pixels in [0, 1] are normalised by `mean`/`std`, then resized bilinearly (no antialiasing) to
    `image_size` (H, W): tscm's evaluation transform, the same the index and evaluation use.
    """

    def __init__(self, image_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size = tuple(int(s) for s in image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, image: Any) -> torch.Tensor:
        return eval_transform(as_rgb(image), self.image_size, self.mean, self.std)

    def __repr__(self) -> str:
        return f"DescriptorTransform(image_size={self.image_size}, mean={self.mean}, std={self.std})"


class HubModel(nn.Module):
    """A tscm checkpoint's network with its preprocessing: `model(batch)` maps B×3×H×W to B×D descriptors."""

    def __init__(self, model: nn.Module, meta: dict[str, Any], source: str | Path) -> None:
        super().__init__()
        self.model = model
        self.meta = meta
        self.source = str(source)
        self.role: str = meta.get("role")
        self.preset: str = meta.get("preset")
        self.fingerprint: str = meta["fingerprint"]
        self.descriptor_dim = int(meta["descriptor_dim"])
        self.transform = DescriptorTransform(meta["image_size"], meta["mean"], meta["std"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return torch.device("cpu") if parameter is None else parameter.device

    def describe(self, images: Sequence[Any], batch_size: int = 16) -> np.ndarray:
        """N×D float32 L2-normalised descriptors of `images` (paths, PIL images or uint8 arrays), in order."""
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "mode"):
            images = [images]  # one image given on its own
        spec = InputSpec.of(self.meta)
        return describe_images(self.model, list(images), spec, batch_size=batch_size, device=str(self.device)).descriptors

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, role={self.role!r}, descriptor_dim={self.descriptor_dim}, source={self.source!r}"


def load_model(checkpoint: str | Path | None, role: str, *, sha256: str | None = None,
               device: str | torch.device | None = None, progress: bool = True) -> HubModel:
    """The `role` model of `checkpoint` (folder, hf:// id or URL; see the module doc), in eval mode."""
    if role not in ROLES:
        raise TscmError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if checkpoint is None or str(checkpoint) == "":
        raise TscmError(f"tscm_{role}: pass checkpoint=PATH (a folder with {WEIGHTS_FILE} and {META_FILE}) "
                        "or a published one (hf://user/name or an https URL of the folder)")
    folder = resolve_checkpoint(checkpoint, sha256, progress=progress)
    model, meta = load_checkpoint(folder, expected_role=role)
    hub_model = HubModel(model, meta, checkpoint).eval()
    if device is not None:
        hub_model = hub_model.to(device)
    return hub_model


# ---- remote checkpoints -----------------------------------------------------------------------------


def is_remote(source: str | Path) -> bool:
    text = str(source)
    return text.startswith(("hf://", "http://", "https://"))


def hub_id_url(hub_id: str) -> str:
    """The base URL of Hugging Face model repository `user/name[@revision]` (or `hf://user/name[@revision]`)."""
    text = hub_id[len("hf://"):] if hub_id.startswith("hf://") else hub_id
    name, _, revision = text.partition("@")
    parts = name.strip("/").split("/")
    if len(parts) != 2 or not all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", part) for part in parts):
        raise TscmError(f"hub id {hub_id!r}: expected user/name (optionally @revision), e.g. hf://someone/tscm-student")
    return f"{HF_ENDPOINT}/{parts[0]}/{parts[1]}/resolve/{revision or 'main'}/"


def folder_url(source: str) -> str:
    """The base URL (ending in '/') of a published checkpoint folder given as hf://..., or a URL of it or its files."""
    if source.startswith("hf://"):
        return hub_id_url(source)
    base = source.split("?", 1)[0].split("#", 1)[0]
    for name in (WEIGHTS_FILE, META_FILE, CARD_FILE):
        if base.endswith("/" + name):
            base = base[: -len(name)]
    return base if base.endswith("/") else base + "/"


def cache_folder(base_url: str) -> Path:
    """Where a published folder is kept: torch.hub's cache directory / tscm / digest of its URL."""
    return Path(torch.hub.get_dir()) / "tscm" / hashlib.sha256(base_url.encode("utf-8")).hexdigest()[:16]


def normalise_sha256(value: str | None, where: str = "sha256") -> str | None:
    if value is None:
        return None
    text = str(value).strip().lower()
    text = text[len("sha256:"):] if text.startswith("sha256:") else text
    if not _HEX64.match(text):
        raise TscmError(f"{where}: expected a SHA-256 (64 hex digits, optionally 'sha256:' first), got {value!r}")
    return text


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_sha256(card_text: str, name: str = WEIGHTS_FILE) -> str | None:
    """The SHA-256 a model card lists for file `name`, or None."""
    found = re.search(_CARD_DIGEST.format(name=re.escape(name)), card_text)
    return found.group(1) if found else None


def offline_message(url: str, reason: Any, base_url: str) -> str:
    return (f"cannot download {url} ({reason}): this machine seems to be offline or the address is unreachable. "
            f"Download {base_url}{WEIGHTS_FILE} and {base_url}{META_FILE} on a machine with network access, put "
            "both files in one folder, and pass that folder's path instead (checkpoint=PATH, or the folder as CKPT)")


def download(url: str, destination: Path, *, expected_sha256: str | None = None, base_url: str | None = None,
             progress: bool = False) -> Path:
    """Fetch `url` into `destination` atomically; with `expected_sha256`, keep it only if its SHA-256 matches."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "tscm"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, atomic_path(destination) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            from tqdm import tqdm

            with open(tmp, "wb") as handle, tqdm(total=total, unit="B", unit_scale=True, desc=destination.name,
                                                 disable=not progress) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    digest.update(block)
                    bar.update(len(block))
            if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
                raise TscmError(f"{url}: SHA-256 is {digest.hexdigest()}, expected {expected_sha256}; the file was "
                                "not kept (a different or damaged file: check the URL and the digest)")
    except urllib.error.HTTPError as error:
        raise TscmError(f"{url}: the server answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise TscmError(offline_message(url, reason, base_url or url.rsplit("/", 1)[0] + "/")) from None
    return destination


def fetch_folder(source: str, sha256: str | None = None, *, progress: bool = True) -> Path:
    """A published checkpoint folder in the local cache (fetched unless a matching copy is there)."""
    base = folder_url(source)
    folder = cache_folder(base)
    weights, meta, card = folder / WEIGHTS_FILE, folder / META_FILE, folder / CARD_FILE
    expected = normalise_sha256(sha256)
    if expected is None and card.is_file():
        expected = card_sha256(card.read_text(encoding="utf-8"))
    if expected is not None and weights.is_file() and meta.is_file() and file_sha256(weights) == expected:
        return folder  # cached copy: no network
    meta_expected = None
    if sha256 is None:
        try:
            download(base + CARD_FILE, card, base_url=base)
        except TscmError as error:
            if "HTTP 404" not in str(error):
                raise
            raise TscmError(f"{base}{CARD_FILE}: no model card to take the SHA-256 of {WEIGHTS_FILE} from; pass the "
                            "digest yourself (sha256=..., the publisher lists it)") from None
        text = card.read_text(encoding="utf-8")
        expected = card_sha256(text)
        meta_expected = card_sha256(text, META_FILE)
        if expected is None:
            raise TscmError(f"{base}{CARD_FILE}: the model card lists no SHA-256 of {WEIGHTS_FILE}; pass the digest "
                            "yourself (sha256=...)")
    download(base + META_FILE, meta, expected_sha256=meta_expected, base_url=base)
    download(base + WEIGHTS_FILE, weights, expected_sha256=expected, base_url=base, progress=progress)
    return folder


def resolve_checkpoint(source: str | Path, sha256: str | None = None, *, progress: bool = True) -> Path:
    """A local checkpoint folder for `source`: the folder itself, or a published one fetched into the cache."""
    if is_remote(source):
        return fetch_folder(str(source), sha256, progress=progress)
    path = Path(source)
    if not path.exists():
        hint = (f"; for a Hugging Face model repository write hf://{source}" if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source))
                else "")
        raise TscmError(f"{path}: no such checkpoint folder{hint}")
    if not path.is_dir():
        raise TscmError(f"{path}: is a file; a checkpoint is a folder with {WEIGHTS_FILE} and {META_FILE}")
    expected = normalise_sha256(sha256)
    if expected is not None and (path / WEIGHTS_FILE).is_file():
        actual = file_sha256(path / WEIGHTS_FILE)
        if actual != expected:
            raise TscmError(f"{path / WEIGHTS_FILE}: SHA-256 is {actual}, expected {expected}")
    return path
