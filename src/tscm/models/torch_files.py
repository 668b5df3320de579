"""Reading `torch.save` files (published checkpoints, backbone weights) without running code from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tscm.errors import TscmError


def load_weights_only(path: str | Path, what: str) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers only, never arbitrary objects.

    A file that holds anything else is refused with a one-line message. torch's own message
    advises retrying with weights_only=False, which would run code from the file: it is not repeated.
    """
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, wrong format, or objects a weights-only load refuses
        text = str(error)
        if "weights_only" in text or "Weights only" in text:
            detail = "it holds objects other than tensors, which a safe weights-only load refuses"
        else:
            detail = text.splitlines()[0] if text else type(error).__name__
        raise TscmError(f"{what} {path} could not be read as weights-only torch data (truncated, corrupt or "
                        f"not a torch file?): {detail}") from None
