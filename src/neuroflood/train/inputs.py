"""The training inputs: options resolved against the coordinate file, shards checked.

:func:`resolve_config` refuses missing or misplaced inputs with a one-line
:class:`~neuroflood.errors.ConfigError` naming the option, and names unnamed volumes after
the coordinate file's single volume. :func:`open_shards` gives each worker of a rank its
shard of the coordinates, every coordinate checked against its volume before anything is
written or allocated.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError, DataError
from ..prepare.coordfile import CoordinateShard, open_coordinates
from .config import TrainConfig
from .patches import PatchSource


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Check the data options and give unnamed volumes the coordinate file's volume name."""
    if not config.coords:
        raise ConfigError("no training coordinates: give --coords PATH (made by `neuroflood prepare`)")
    if not config.run_dir.strip():
        raise ConfigError("no run directory: give --run-dir DIR")
    check_file(config.coords, "--coords", "the coordinate file made by `neuroflood prepare`")
    if config.eval_coords is not None:
        check_file(config.eval_coords, "--eval-coords", "a held-out coordinate file made by `neuroflood prepare`")
    if config.init_from is not None and not config.init_from.strip():
        raise ConfigError("--init-from is empty; give a checkpoint directory or a TensorFlow prefix, or leave it out")
    names = open_coordinates(config.coords).volume_names
    updates: dict[str, Any] = {}
    for key in ("images", "labels", "loss_weights"):
        specs = dict(getattr(config, key))
        if "" in specs:
            if len(names) != 1:
                raise ConfigError(
                    f"the coordinate file names volumes {', '.join(names)}; name each volume: "
                    f"--{key.replace('_', '-').rstrip('s')} NAME=SPEC"
                )
            specs[names[0]] = specs.pop("")
            updates[key] = specs
    if not config.images or not config.labels:
        raise ConfigError("give the image and labels of each training volume: --image SPEC --labels SPEC")
    # A weight volume under a name the coordinates do not use would be silently ignored.
    unknown = sorted(set(updates.get("loss_weights", config.loss_weights)) - set(names))
    if unknown:
        raise ConfigError(
            f"--loss-weights names volume(s) {', '.join(unknown)}, but {config.coords} has {', '.join(names)}; "
            "name each weight volume as its training volume (NAME=SPEC)"
        )
    return config.model_copy(update=updates) if updates else config


def check_file(path: str, flag: str, what: str) -> None:
    """Refuse an empty path or a directory where a file is needed, naming the option."""
    if not path.strip():
        raise ConfigError(f"{flag} is empty; give {what}")
    if os.path.isdir(path):
        inside = os.path.join(path, "coordinates.nfc")
        hint = f", e.g. {inside}" if os.path.isfile(inside) else ""
        raise ConfigError(f"{flag} {path} is a directory; give {what}{hint}")


def open_shards(config: TrainConfig, rank: int, world: int, check_eval: bool) -> tuple[PatchSource, dict[int, CoordinateShard]]:
    """The patch source and the coordinate shard of each worker of ``rank``, all checked.

    Worker ``w`` of all ``world × emulate_workers`` gets ``shard(w, world × emulate_workers)``;
    rank ``r`` runs workers ``r·E … r·E + E − 1``. With ``check_eval`` the held-out
    coordinates are checked too.
    """
    coords = open_coordinates(config.coords)
    workers = config.emulate_workers
    if len(coords) < world * workers:
        raise DataError(
            f"{config.coords} holds {len(coords)} coordinates for {world * workers} workers "
            f"({world} process(es) x {workers} emulated); every worker needs at least one: use more coordinates or fewer workers"
        )
    source = PatchSource(config, coords.volume_names)
    shards = {w: coords.shard(w, world * workers) for w in range(rank * workers, (rank + 1) * workers)}
    for shard in shards.values():
        source.check(shard, config.coords)
    if config.eval_coords and check_eval:
        eval_coords = open_coordinates(config.eval_coords)
        source.for_volumes(eval_coords.volume_names).check(eval_coords.shard(0, 1), config.eval_coords)
    return source, shards
