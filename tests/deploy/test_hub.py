"""torch.hub entry points (hubconf.py): local checkpoints, role checks, remote folders over a loopback server."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tscm.deploy.packaging import hub
from tscm.errors import TscmError
from tscm.models.checkpoint import load_checkpoint


REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture()
def hub_dir(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub-cache"))
    yield tmp_path / "hub-cache"
    torch.hub.set_dir(previous)


def images(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(count):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (30 + i, 44, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_torch_hub_load_local_student(tiny_student, tmp_path) -> None:
    model = torch.hub.load(str(REPOSITORY), "tscm_student", source="local", checkpoint=str(tiny_student))
    assert not model.training
    assert model.role == "student" and model.descriptor_dim == 256
    paths = images(tmp_path / "images")
    reference, meta = load_checkpoint(tiny_student)
    assert model.fingerprint == meta["fingerprint"]
    batch = torch.stack([model.transform(p) for p in paths])
    assert batch.shape == (3, 3, *meta["image_size"])
    with torch.no_grad():
        expected = reference(batch).numpy()
    # paths, PIL images and uint8 arrays give the same descriptors
    mixed = [paths[0], Image.open(paths[1]).convert("RGB"), np.asarray(Image.open(paths[2]).convert("RGB"))]
    for inputs in (paths, mixed):
        described = model.describe(inputs, batch_size=2)
        assert described.dtype == np.float32 and described.shape == (3, 256)
        np.testing.assert_allclose(described, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(described, axis=1), 1.0, atol=1e-5)
    assert model.describe(paths[0]).shape == (1, 256)  # one image on its own
    with torch.no_grad():
        np.testing.assert_allclose(model(batch).numpy(), expected, atol=1e-6)


def test_torch_hub_role_must_match(tiny_student, tiny_teacher) -> None:
    with pytest.raises(TscmError, match="holds a teacher model, expected a student"):
        torch.hub.load(str(REPOSITORY), "tscm_student", source="local", checkpoint=str(tiny_teacher))
    with pytest.raises(TscmError, match="holds a student model, expected a teacher"):
        torch.hub.load(str(REPOSITORY), "tscm_teacher", source="local", checkpoint=str(tiny_student))
    model = torch.hub.load(str(REPOSITORY), "tscm_teacher", source="local", checkpoint=str(tiny_teacher))
    assert model.role == "teacher" and not model.training


def test_hubconf_lists_entry_points_and_dependencies(tmp_path) -> None:
    import importlib.util

    # torch.hub.list/help read GitHub repositories only; they list the public callables and print docstrings
    spec = importlib.util.spec_from_file_location("tscm_hubconf_under_test", REPOSITORY / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = {name for name in dir(module) if callable(getattr(module, name)) and not name.startswith("_")}
    assert entries == {"tscm_student", "tscm_teacher"}
    assert "checkpoint" in module.tscm_student.__doc__ and "refused" in module.tscm_teacher.__doc__
    assert "torch" in module.dependencies
    assert all(importlib.util.find_spec(name) is not None for name in module.dependencies)


def test_bad_sources_are_named(tiny_student, tmp_path) -> None:
    with pytest.raises(TscmError, match="pass checkpoint=PATH"):
        hub.load_model(None, "student")
    with pytest.raises(TscmError, match="no such checkpoint folder; for a Hugging Face model repository write hf://"):
        hub.load_model("someone/tscm-student", "student")
    with pytest.raises(TscmError, match="is a file"):
        hub.load_model(tiny_student / "meta.json", "student")
    with pytest.raises(TscmError, match="SHA-256 is"):
        hub.load_model(tiny_student, "student", sha256="0" * 64)
    with pytest.raises(TscmError, match="expected a SHA-256"):
        hub.load_model(tiny_student, "student", sha256="abc")
    digest = hub.file_sha256(tiny_student / "model.safetensors")
    assert hub.load_model(tiny_student, "student", sha256=f"sha256:{digest.upper()}").role == "student"


def test_hub_ids_and_urls() -> None:
    assert hub.hub_id_url("hf://someone/tscm-student") == "https://huggingface.co/someone/tscm-student/resolve/main/"
    assert hub.hub_id_url("someone/tscm-student@v1") == "https://huggingface.co/someone/tscm-student/resolve/v1/"
    with pytest.raises(TscmError, match="expected user/name"):
        hub.hub_id_url("hf://just-a-name")
    assert hub.folder_url("https://example.org/m/model.safetensors") == "https://example.org/m/"
    assert hub.folder_url("https://example.org/m") == "https://example.org/m/"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass


@pytest.fixture()
def served_card(tiny_student, tmp_path):
    """A `tscm card` folder served over HTTP on the loopback interface."""
    from tscm.deploy.packaging.model_card import write_model_card

    card = tmp_path / "site" / "published"
    write_model_card(tiny_student, card, timing=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(tmp_path / "site")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/published/", card, server
    finally:
        server.shutdown()
        server.server_close()


def test_remote_folder_checked_against_card_and_cached(served_card, hub_dir, tiny_student) -> None:
    url, card, server = served_card
    model = torch.hub.load(str(REPOSITORY), "tscm_student", source="local", checkpoint=url, progress=False)
    assert model.fingerprint == load_checkpoint(tiny_student)[1]["fingerprint"]
    cached = hub.cache_folder(hub.folder_url(url))
    assert cached.parent.parent == hub_dir
    assert (cached / "model.safetensors").read_bytes() == (card / "model.safetensors").read_bytes()
    server.shutdown()  # offline from now on: the cached copy (its SHA-256 still matching the card) is used
    again = hub.load_model(url + "model.safetensors", "student", progress=False)
    assert again.fingerprint == model.fingerprint


def test_remote_folder_with_wrong_digest_is_not_kept(served_card, hub_dir) -> None:
    url, _, _ = served_card
    with pytest.raises(TscmError, match="SHA-256 is .* expected 1111"):
        hub.load_model(url, "student", sha256="1" * 64, progress=False)
    assert not (hub.cache_folder(hub.folder_url(url)) / "model.safetensors").exists()
    digest = hub.file_sha256(served_card[1] / "model.safetensors")
    assert hub.load_model(url, "student", sha256=digest, progress=False).role == "student"


def test_offline_download_says_what_to_do(hub_dir) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/published/"
    with pytest.raises(TscmError, match="offline.*Download .*model.safetensors.*pass that folder's path"):
        hub.load_model(url, "student", sha256="2" * 64, progress=False)


@pytest.mark.slow
def test_hubconf_uses_its_own_checkout(tiny_student, tmp_path) -> None:
    """torch.hub downloads a repository without installing it: hubconf.py imports the checkout's src/tscm."""
    import shutil
    import subprocess
    import sys

    checkout = tmp_path / "checkout"
    shutil.copytree(REPOSITORY / "src" / "tscm", checkout / "src" / "tscm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPOSITORY / "hubconf.py", checkout / "hubconf.py")
    script = ("import torch, sys; m = torch.hub.load(sys.argv[1], 'tscm_student', source='local', checkpoint=sys.argv[2]); "
              "import tscm; print(tscm.__file__); print(m.descriptor_dim)")
    done = subprocess.run([sys.executable, "-c", script, str(checkout), str(tiny_student)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    where, dim = done.stdout.split()
    assert Path(where).is_relative_to(checkout) and dim == "256"
