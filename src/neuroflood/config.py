"""Validated configuration: shared helpers and the model config.

Every config is a pydantic model that forbids unknown keys, so a typo in a TOML file is an
error that names the key instead of a silently ignored setting. Stages keep their own config
classes next to their code (``neuroflood.train.config``, ``neuroflood.infer.config``, …) and
build on :class:`Config` here; ``docs/configuration.md`` is generated from all of them.
Axis order is z, y, x everywhere; thresholds are probabilities.
"""

from __future__ import annotations

import json
import os
import tomllib
from typing import Any, Sequence, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every neuroflood config: unknown keys are errors; values are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def build(cls: type[C], *sources: dict[str, Any] | None) -> C:
        """Merge dicts left to right (later wins, ``None`` values skipped) and validate."""
        merged: dict[str, Any] = {}
        for src in sources:
            for k, v in (src or {}).items():
                if v is not None:
                    merged[k] = v
        try:
            return cls(**merged)
        except ValidationError as e:
            raise ConfigError(_one_line(cls.__name__, e)) from None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _one_line(name: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown option; check its spelling against docs/configuration.md"
        parts.append(f"{loc}: {msg}")
    return f"invalid {name}: " + "; ".join(parts)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist; check the path")
    try:
        if path.endswith(".json"):
            with open(path) as f:
                return json.load(f)
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot parse {path}: {e}") from None


def parse_ints(text: str | Sequence[int], n: int = 3, name: str = "value") -> tuple[int, ...]:
    """Parse ``"8,8,8"`` or ``"8"`` (broadcast) into ``n`` ints."""
    if not isinstance(text, str):
        vals = tuple(int(v) for v in text)
    else:
        try:
            vals = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"{name} {text!r} is not a comma-separated list of integers") from None
    if len(vals) == 1 and n > 1:
        vals = vals * n
    if len(vals) != n:
        raise ConfigError(f"{name} {text!r} needs {n} values (z,y,x)")
    return vals



class ModelConfig(Config):
    """The network and the image normalization it was trained with (z, y, x).

    Defaults are those of the published google/ffn FIB-25 model.
    """

    name: str = Field("convstack_3d", description="architecture; only convstack_3d exists")
    depth: int = Field(12, ge=1, description="residual levels (google/ffn class default 9; FIB-25 12)")
    features: int | list[int] = Field(32, description="channels per 3x3x3 conv, or one per conv")
    fov_size: tuple[int, int, int] = Field((33, 33, 33), description="field of view, z,y,x")
    deltas: tuple[int, int, int] = Field((8, 8, 8), description="FOV move step, z,y,x")
    image_mean: float = Field(128.0, description="image normalization: (img - mean) / stddev")
    image_stddev: float = Field(33.0, gt=0, description="image normalization: (img - mean) / stddev")

    @field_validator("fov_size", "deltas", mode="before")
    @classmethod
    def _triples(cls, v: Any) -> Any:
        if isinstance(v, int):
            return (v, v, v)
        if isinstance(v, str):
            return parse_ints(v, 3)
        return v

    @field_validator("fov_size")
    @classmethod
    def _odd_fov(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(s < 1 or s % 2 == 0 for s in v):
            raise ValueError(f"fov_size {v} must be odd and positive on every axis (FOVs have a centre voxel)")
        return v

    @field_validator("deltas")
    @classmethod
    def _deltas(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(d < 0 for d in v):
            raise ValueError(f"deltas {v} must be >= 0")
        return v

    @classmethod
    def parse_spec(cls, text: str, base: "ModelConfig | None" = None) -> "ModelConfig":
        """Parse ``depth=4,features=16,fov=17,17,17,deltas=4,4,4`` (unlisted keys from ``base``).

        ``fov`` is short for ``fov_size``; values with commas continue until the next ``key=``.
        """
        aliases = {"fov": "fov_size", "mean": "image_mean", "stddev": "image_stddev"}
        values: dict[str, Any] = {}
        key = None
        for tok in [t for t in text.split(",") if t.strip()]:
            if "=" in tok:
                key, val = tok.split("=", 1)
                key = aliases.get(key.strip(), key.strip())
                values[key] = [val.strip()]
            elif key is None:
                raise ConfigError(f"model spec {text!r} must start with key=value, e.g. depth=12")
            else:
                values[key].append(tok.strip())
        parsed: dict[str, Any] = {}
        for k, vals in values.items():
            if k in ("fov_size", "deltas", "features") and (len(vals) > 1 or k != "features"):
                parsed[k] = [int(v) for v in vals] if len(vals) > 1 else int(vals[0])
            elif k == "name":
                parsed[k] = vals[0]
            else:
                parsed[k] = float(vals[0]) if k.startswith("image_") else int(vals[0])
        return cls.build(base.model_dump() if base else None, parsed)
