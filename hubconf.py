"""torch.hub entry points of tscm: `torch.hub.load(REPO, "tscm_student", checkpoint=PATH_OR_URL)`.

The code lives in `src/tscm/deploy/packaging/hub.py`; see its docstring for what `checkpoint` may be.
"""

import sys as _sys
from pathlib import Path as _Path

dependencies = ["torch", "torchvision", "timm", "safetensors", "numpy", "scipy", "PIL", "tqdm", "yaml"]

_SRC = _Path(__file__).resolve().parent / "src"
if "tscm" not in _sys.modules and (_SRC / "tscm").is_dir() and str(_SRC) not in _sys.path:
    _sys.path.insert(0, str(_SRC))  # this checkout's own tscm (torch.hub downloads the repository, it does not install it)


def tscm_student(checkpoint=None, sha256=None, device=None, progress=True):
    """tscm student: ResNet trunk + patch-embedding NetVLAD + GeM, L2-normalised descriptors.

    checkpoint: a checkpoint folder (model.safetensors + meta.json), hf://user/name, or an https URL
    of a published folder (fetched into torch.hub's cache, checked against `sha256` or the SHA-256
    its model card lists). Returns the model in eval mode; `model.describe(images)` gives N×D
    descriptors of paths / PIL images / uint8 arrays, `model.transform` is its preprocessing.
    """
    from tscm.deploy.packaging.hub import load_model

    return load_model(checkpoint, "student", sha256=sha256, device=device, progress=progress)


def tscm_teacher(checkpoint=None, sha256=None, device=None, progress=True):
    """tscm teacher: ResNet + ViT tokens fused by an inter-transformer encoder, NetVLAD heads + GeM.

    Same arguments and result as `tscm_student`; a student checkpoint is refused.
    """
    from tscm.deploy.packaging.hub import load_model

    return load_model(checkpoint, "teacher", sha256=sha256, device=device, progress=progress)
