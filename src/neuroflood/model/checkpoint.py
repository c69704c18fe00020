"""Native model checkpoints (``model.safetensors`` + ``config.json``) and TF import.

A native checkpoint is a directory::

    model.safetensors   the weights (names as in ConvStack3D.state_dict())
    config.json         {"format": "neuroflood-model", "version": 1,
                         "model": {ModelConfig}, "provenance": {...}}

Nothing is unpickled. Writes go to a temporary directory that is renamed into place, so a
crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from .convstack import ConvStack3D, layer_names
from .tf_checkpoint import read_tf_checkpoint

FORMAT = "neuroflood-model"
VERSION = 1


class FFNModel(ConvStack3D):
    """A :class:`ConvStack3D` that carries its :class:`ModelConfig` (``model.config``)."""

    def __init__(self, config: ModelConfig):
        if config.name != "convstack_3d":
            raise CheckpointError(f"unknown architecture {config.name!r}; only convstack_3d exists")
        super().__init__(config.depth, config.features, config.fov_size, config.deltas)
        self.config = config
        self.provenance: dict[str, Any] = {}

    def normalize(self, image: np.ndarray | torch.Tensor) -> Any:
        """``(image - mean) / stddev`` in float32, as the network expects."""
        c = self.config
        if isinstance(image, torch.Tensor):
            return (image.float() - c.image_mean) / c.image_stddev
        return (np.asarray(image, np.float32) - np.float32(c.image_mean)) / np.float32(c.image_stddev)


def build_model(config: ModelConfig | None = None, seed: int | None = None) -> FFNModel:
    """A freshly initialized model (Glorot-uniform weights, zero biases)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return FFNModel(config or ModelConfig())
    return FFNModel(config or ModelConfig())


def save_model(model: FFNModel, path: str | os.PathLike, provenance: dict | None = None, command: str | None = None) -> Path:
    """Write ``model`` as a native checkpoint directory at ``path`` (atomically).

    The directory is built under a temporary name and renamed into place; ``command`` (e.g.
    ``"import-tf"``) marks it as that command's output (see :mod:`neuroflood.outputs`).
    Callers check that replacing an existing ``path`` is allowed.
    """
    from ..atomic import normal_permissions
    from ..outputs import write_marker

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        normal_permissions(tmp)  # mkdtemp makes it private; a lab shares its models
        if command:
            write_marker(tmp, command)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "model": json.loads(model.config.model_dump_json()),
            "parameters": model.num_parameters(),
            "provenance": {**model.provenance, **(provenance or {})},
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():
            normal_permissions(f)  # safetensors writes its file private (0600)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _load_native(path: Path) -> FFNModel:
    cfg_path, w_path = path / "config.json", path / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            what = "is missing" if not p.exists() else "is not a file"
            raise CheckpointError(f"{path} is not a neuroflood checkpoint ({p.name} {what})")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"{cfg_path} cannot be read as JSON ({e}); the checkpoint is corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{cfg_path} is not a neuroflood model config (format {got!r})")
    try:
        config = ModelConfig.build(meta.get("model"))
    except ConfigError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from None
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{w_path} is truncated or corrupt ({e}); re-copy the checkpoint") from None
    model = FFNModel(config)
    _load_state_strict(model, state, str(path))
    provenance = meta.get("provenance", {})
    model.provenance = provenance if isinstance(provenance, dict) else {}
    return model


def _load_state_strict(model: FFNModel, state: dict[str, torch.Tensor], where: str) -> None:
    """Load weights only if every name and shape matches: never a half-loaded model."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{where} does not match the architecture in its config "
            f"(missing: {', '.join(missing[:4]) or 'none'}; unexpected: {', '.join(extra[:4]) or 'none'})"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{where}: {k} has shape {tuple(state[k].shape)}, the architecture needs {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)


def _tf_variable_map(depth: int) -> dict[str, str]:
    """TF variable name -> torch parameter name."""
    out = {}
    for name in layer_names(depth):
        out[f"seed_update/{name}/weights"] = f"layers.{name}.weight"
        out[f"seed_update/{name}/biases"] = f"layers.{name}.bias"
    return out


def infer_tf_config(tensors: dict[str, np.ndarray], base: ModelConfig | None = None) -> ModelConfig:
    """Depth and features from the variable names and shapes of a google/ffn checkpoint."""
    convs = {k.split("/")[1] for k in tensors if k.startswith("seed_update/conv") and k.endswith("/weights")}
    if "conv0_a" not in convs or "conv_lom" not in convs:
        raise CheckpointError(
            "the checkpoint has no seed_update/conv0_a or seed_update/conv_lom: it is not a google/ffn convstack_3d model"
        )
    depth = 1 + max((int(c[4:].split("_")[0]) for c in convs if c not in ("conv_lom",)), default=0)
    feats = [int(tensors[f"seed_update/{n}/weights"].shape[-1]) for n in layer_names(depth)[:-1] if f"seed_update/{n}/weights" in tensors]
    features: int | list[int] = feats[0] if len(set(feats)) == 1 else feats
    return ModelConfig.build(base.model_dump() if base else None, {"depth": depth, "features": features})


def load_tf_checkpoint(prefix: str | os.PathLike, config: ModelConfig | None = None) -> FFNModel:
    """Build a model from a google/ffn TF checkpoint prefix (no TensorFlow needed).

    Depth and features are read off the checkpoint; ``config`` supplies FOV, deltas and
    image normalization (default: the FIB-25 values, FOV 33³, deltas 8, mean 128, stddev 33).
    """
    prefix = os.fspath(prefix)
    tensors = read_tf_checkpoint(prefix)
    config = infer_tf_config(tensors, config)
    model = FFNModel(config)
    mapping = _tf_variable_map(config.depth)
    missing = [k for k in mapping if k not in tensors]
    if missing:
        raise CheckpointError(f"{prefix} lacks variables {', '.join(missing[:4])}; it is not a complete model")
    state = {}
    for tf_name, torch_name in mapping.items():
        w = tensors[tf_name]
        if w.ndim == 5:  # TF (kz, ky, kx, in, out) -> torch (out, in, kz, ky, kx)
            w = np.transpose(w, (4, 3, 0, 1, 2))
        state[torch_name] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    _load_state_strict(model, state, prefix)
    step = tensors.get("global_step")
    model.provenance = {
        "source": "google/ffn TensorFlow checkpoint",
        "checkpoint": os.path.basename(prefix),
        "global_step": int(step) if step is not None else None,
    }
    return model


def is_tf_prefix(path: str | os.PathLike) -> bool:
    return os.path.exists(f"{os.fspath(path)}.index")


def load_model(path: str | os.PathLike, config: ModelConfig | None = None, device: str | torch.device = "cpu") -> FFNModel:
    """Load a model from a native checkpoint directory or a google/ffn TF checkpoint prefix.

    Returns the model in eval mode. ``model(image, seed)`` maps normalized image and seed
    logits, each ``[B, 1, Z, Y, X]``, to logits of the same shape; ``model.config`` holds FOV,
    deltas, image mean and stddev. ``config`` applies only to TF checkpoints, which do not
    record FOV or normalization.
    """
    p = Path(path)
    if p.is_dir():
        model = _load_native(p)
    elif is_tf_prefix(p):
        model = load_tf_checkpoint(p, config)
    else:
        raise CheckpointError(
            f"no checkpoint at {path}: give a neuroflood checkpoint directory (model.safetensors + "
            "config.json) or a TensorFlow prefix such as model.ckpt-27465036"
        )
    return model.to(device).eval()


def import_tf(prefix: str | os.PathLike, out_dir: str | os.PathLike, config: ModelConfig | None = None) -> Path:
    """Convert a google/ffn TF checkpoint into a native checkpoint directory.

    ``out_dir`` may be new or an earlier native checkpoint (replaced atomically); anything
    else there (a file, a directory of other files) is refused, never replaced. The command
    (``neuroflood import-tf``) is stricter: it replaces only an earlier import-tf output, and
    only with ``--overwrite``.
    """
    out = _check_model_output(out_dir)
    model = load_tf_checkpoint(prefix, config)
    try:
        return save_model(model, out, command="import-tf")
    except OSError as e:
        raise CheckpointError(f"cannot write {out} ({e.strerror or e}); choose a writable output directory") from None


def _check_model_output(out_dir: str | os.PathLike) -> Path:
    from ..outputs import check_writable_location

    """Refuse an output that cannot be written or that is not ours to replace, before any work."""
    text = os.fspath(out_dir)
    if not text.strip():
        raise ConfigError("the output directory name is empty; give one, e.g. fib25_model")
    out = Path(text)
    if out.name in ("", ".", ".."):
        raise ConfigError(f"{text!r} names no new directory; give a directory name, e.g. fib25_model")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise ConfigError(f"{out} exists and is not a directory; choose another output directory")
        if any(out.iterdir()) and not _is_native(out):
            raise ConfigError(
                f"{out} holds other files (not a neuroflood model checkpoint), which would be replaced; choose another output directory"
            )
    check_writable_location(out, "output directory")
    return out


def _is_native(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False
