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
import re
import tomllib
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from .errors import ConfigError

C = TypeVar("C", bound="Config")


class ConfigValueError(ConfigError, ValueError):
    """A bad value found by a shared parser (:func:`parse_ints`, :func:`features_per_layer`).

    It is a :class:`ConfigError` for direct callers; inside a pydantic validator it is a
    ``ValueError``, so pydantic reports it under the key it came from.
    """


class Config(BaseModel):
    """Base of every neuroflood config: unknown keys are errors; values are validated.

    Numbers must be finite (no NaN or infinity), and ``true``/``false`` is not a number: a
    TOML ``learning_rate = true`` would otherwise train at 1.0.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _holds_bool(v) and not _admits_bool(field.annotation):
            raise ValueError(f"expected {_kind(field.annotation)}, got the boolean {str(_first_bool(v)).lower()}")
        return v

    @classmethod
    def build(cls: type[C], *sources: dict[str, Any] | None) -> C:
        """Merge dicts left to right (later wins, ``None`` values skipped) and validate."""
        merged: dict[str, Any] = {}
        for src in sources:
            if src is not None and not isinstance(src, dict):
                raise ConfigError(f"invalid {cls.__name__}: expected a table of options, got {_show(src)}")
            for k, v in (src or {}).items():
                if v is not None:
                    merged[k] = v
        try:
            return cls(**merged)
        except ValidationError as e:
            raise ConfigError(_one_line(cls.__name__, e)) from None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _admits_bool(annotation: Any) -> bool:
    """Whether a field of this type may hold a boolean somewhere (bool, Any, nested configs)."""
    if annotation is bool or annotation is Any:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True  # a nested config checks its own fields
    return any(_admits_bool(a) for a in typing.get_args(annotation))


def _holds_bool(v: Any) -> bool:
    return _first_bool(v) is not None


def _first_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else ()
    for item in items:
        found = _first_bool(item)
        if found is not None:
            return found
    return None


def _kind(annotation: Any) -> str:
    """A few words for what a field holds, for the boolean message."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = [_kind(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(dict.fromkeys(kinds))
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(annotation))
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if origin in (list, tuple):
        return "a list of numbers"
    if origin is dict:
        return "a table"
    return "a value of another type"


# Union member tags that pydantic puts into an error's location (``features.int``).
_UNION_TAG = re.compile(r"^(int|float|str|bool|none|list|tuple|dict|set|literal|function-\w+)(\[.*\])?$")


def _show(value: Any, limit: int = 40) -> str:
    """A short JSON-like rendering of a given value (as the user wrote it in TOML or JSON)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(name: str, e: ValidationError) -> str:
    """One line naming every bad key (``model.depth``) with what is wrong and what was given."""
    by_loc: dict[str, list[str]] = {}
    for err in e.errors():
        parts = [str(p) for p in err["loc"] if not (isinstance(p, str) and _UNION_TAG.match(p))]
        loc = ".".join(parts)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown option; check its spelling against docs/configuration.md"
        elif err["type"] == "missing":
            msg = "required option is missing"
        else:
            msg = re.sub(r"^(Value|Assertion) error, ", "", msg)
            msg = msg[:1].lower() + msg[1:]
            if loc and err["type"] not in ("value_error", "assertion_error"):  # those name the value
                msg += f" (got {_show(err.get('input'))})"
        if not loc:  # a check across options: its message names them
            loc = "options"
        if msg not in by_loc.setdefault(loc, []):
            by_loc[loc].append(msg)
    return f"invalid {name}: " + "; ".join(f"{loc}: {' or '.join(msgs)}" for loc, msgs in by_loc.items())


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML or JSON config file (a table of options) into a dict."""
    path = os.fspath(path)
    if not path:
        raise ConfigError("the config file name is empty; give a TOML or JSON file")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist; check the path")
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory; give a TOML or JSON file")
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        else:
            with open(path, "rb") as f:
                data = tomllib.load(f)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot parse {path}: {e}; fix the syntax (.json files are JSON, others TOML)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; give a TOML or JSON file") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror or e}); check the path and its permissions") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} holds {type(data).__name__}, not a table of options; write key = value lines")
    return data


def parse_ints(text: str | Sequence[int], n: int = 3, name: str = "value") -> tuple[int, ...]:
    """Parse ``"8,8,8"`` or ``"8"`` (broadcast) into ``n`` ints."""
    try:
        if not isinstance(text, str):
            if any(isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) for v in text):
                raise ValueError
            vals = tuple(int(v) for v in text)
        else:
            vals = tuple(int(v) for v in text.split(",") if v.strip())
    except (TypeError, ValueError, OverflowError):
        raise ConfigValueError(f"{name} {_show(text)} is not a comma-separated list of integers") from None
    if len(vals) == 1 and n > 1:
        vals = vals * n
    if len(vals) != n:
        raise ConfigValueError(f"{name} {_show(text)} needs {n} values (z,y,x)")
    return vals


def check_features(depth: int, features: int | Sequence[int]) -> None:
    """Raise :class:`ConfigValueError` unless ``features`` can form a stack of ``depth`` levels.

    That is one positive int, or ``2·depth`` positive ints (conv0_a, conv0_b, conv1_a, ...)
    where each conv{i}_b gives as many channels as its module's input (the residual sum).
    """
    n = 2 * depth  # every 3x3x3 conv; conv_lom always has 1 output
    feats = [features] if isinstance(features, int) else list(features)
    if any(isinstance(f, bool) or not isinstance(f, int) for f in feats):
        raise ConfigValueError(f"features {_show(features)} must be an integer or a list of integers")
    if any(f < 1 for f in feats):
        raise ConfigValueError(f"features {_show(features)} must be >= 1 (channels per conv)")
    if isinstance(features, int):
        return
    if len(feats) != n:
        raise ConfigValueError(
            f"features has {len(feats)} entries but depth {depth} has {n} 3x3x3 convs; "
            "give one per conv (conv0_a, conv0_b, conv1_a, ...) or a single int"
        )
    # The skip connection adds conv{i}_b's output to its module input.
    for i in range(1, depth):
        if feats[2 * i + 1] != feats[2 * i - 1]:
            raise ConfigValueError(
                f"features for conv{i}_b ({feats[2 * i + 1]}) must equal its module input ({feats[2 * i - 1]}) for the residual sum"
            )


def features_per_layer(depth: int, features: int | Sequence[int]) -> list[int]:
    """Channels of each 3x3x3 conv (conv0_a, conv0_b, conv1_a, ...); see :func:`check_features`."""
    check_features(depth, features)
    return [features] * (2 * depth) if isinstance(features, int) else [int(f) for f in features]


class ModelConfig(Config):
    """The network and the image normalization it was trained with (z, y, x).

    Defaults are those of the published google/ffn FIB-25 model.
    """

    name: str = Field("convstack_3d", description="architecture; only convstack_3d exists")
    depth: int = Field(12, ge=1, le=256, description="residual levels (google/ffn class default 9; FIB-25 12)")
    features: int | list[int] = Field(32, description="channels per 3x3x3 conv, or one per conv")
    fov_size: tuple[int, int, int] = Field((33, 33, 33), description="field of view, z,y,x")
    deltas: tuple[int, int, int] = Field((8, 8, 8), description="FOV move step, z,y,x")
    image_mean: float = Field(128.0, description="image normalization: (img - mean) / stddev")
    image_stddev: float = Field(33.0, gt=0, description="image normalization: (img - mean) / stddev")

    @field_validator("name")
    @classmethod
    def _known_name(cls, v: str) -> str:
        if v != "convstack_3d":
            raise ValueError(f"unknown architecture {v!r}; only convstack_3d exists")
        return v

    def parameter_count(self) -> int:
        """Weights and biases of the network, computed without building it."""
        f = self.features
        if isinstance(f, int):  # conv0_a has 2 inputs (image, seed), every other 3x3x3 conv f
            return (27 * 2 * f + f) + (2 * self.depth - 1) * (27 * f * f + f) + f + 1
        ins = [2] + f[:-1]
        return sum(27 * i * o + o for i, o in zip(ins, f)) + f[-1] + 1

    def activation_channels(self) -> int:
        """Channels summed over every 3x3x3 conv: the activations one FOV keeps per voxel."""
        return 2 * self.depth * self.features if isinstance(self.features, int) else sum(self.features)

    @field_validator("features", mode="before")
    @classmethod
    def _features_type(cls, v: Any) -> Any:
        # One clear message instead of pydantic's two (one per member of int | list[int]).
        ok = isinstance(v, int) or (isinstance(v, (list, tuple)) and all(isinstance(f, int) for f in v))
        if not ok or _holds_bool(v):
            raise ValueError(f"features {_show(v)} must be an integer or a list of integers (one per 3x3x3 conv)")
        return list(v) if isinstance(v, tuple) else v

    @field_validator("features")
    @classmethod
    def _features_fit(cls, v: int | list[int], info: ValidationInfo) -> int | list[int]:
        depth = info.data.get("depth")
        if depth is not None:  # else depth has its own error
            check_features(depth, v)
        # A model file (config.json) is input too: bound its size before anything is built.
        if max([v] if isinstance(v, int) else v) > 4096:
            raise ValueError(f"features {_show(v)} exceed 4096 channels per conv; no FFN is that wide (is the file corrupt?)")
        return v

    @field_validator("fov_size", "deltas", mode="before")
    @classmethod
    def _triples(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return (v, v, v)
        if isinstance(v, str):
            return parse_ints(v, 3)
        return v

    @field_validator("fov_size")
    @classmethod
    def _odd_fov(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(s < 1 or s % 2 == 0 for s in v):
            raise ValueError(f"fov_size {v} must be odd and positive on every axis (FOVs have a centre voxel)")
        if max(v) > 1025:
            raise ValueError(f"fov_size {v} exceeds 1025 voxels on an axis; give the FOV in voxels, e.g. 33,33,33")
        return v

    @field_validator("deltas")
    @classmethod
    def _deltas(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(d < 0 for d in v):
            raise ValueError(f"deltas {v} must be >= 0")
        return v

    @classmethod
    def parse_spec(cls, text: str, base: ModelConfig | None = None) -> ModelConfig:
        """Parse ``depth=4,features=16,fov=17,17,17,deltas=4,4,4`` (unlisted keys from ``base``).

        ``fov`` is short for ``fov_size``; values with commas continue until the next ``key=``.
        """
        aliases = {"fov": "fov_size", "mean": "image_mean", "stddev": "image_stddev"}
        values: dict[str, list[str]] = {}
        key = None
        for tok in [t for t in text.split(",") if t.strip()]:
            if "=" in tok:
                key, val = tok.split("=", 1)
                key = aliases.get(key.strip(), key.strip())
                if key in values:
                    raise ConfigError(f"model spec {text!r} gives {key} twice; give each key once")
                values[key] = [val.strip()]
            elif key is None:
                raise ConfigError(f"model spec {text!r} must start with key=value, e.g. depth=12")
            else:
                values[key].append(tok.strip())
        if not values:
            raise ConfigError(f"model spec {text!r} is empty; give key=value pairs, e.g. depth=12,features=32")
        parsed: dict[str, Any] = {}
        for k, vals in values.items():
            if k == "name":
                parsed[k] = ",".join(vals)
                continue
            as_float = k.startswith("image_")
            try:
                nums = [float(v) if as_float else int(v) for v in vals]
            except ValueError:
                kind = "a number" if as_float else ("integers" if len(vals) > 1 else "an integer")
                raise ConfigError(f"model spec {text!r}: {k}={','.join(vals)} is not {kind}") from None
            parsed[k] = nums if len(nums) > 1 else nums[0]
        return cls.build(base.model_dump() if base else None, parsed)
