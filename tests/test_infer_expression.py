"""Mask expressions are checked arithmetic, never ``eval``: hostile ones are refused with a
message naming the construct (at config load and when the mask is built), valid ones give the
same masks as before, and ``neuroflood segment`` refuses a hostile config before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from badinput import Case, check_refused
from infer_helpers import bright_image, bright_model
from neuroflood.errors import ConfigError
from neuroflood.infer.config import InferenceRequest, MaskConfig
from neuroflood.infer.expression import MAX_DEPTH, MAX_LENGTH, check_expression, evaluate_expression
from neuroflood.infer.segment import build_mask
from neuroflood.model import save_model
from neuroflood.volume import write_volume

# (expression, what the message must name)
REFUSED = [
    ("np.ctypeslib.ctypes.CDLL(None).system(b'touch /tmp/x') == 0", r"attribute 'ctypeslib'"),
    ("z.__class__.__mro__[-1].__subclasses__()", r"dunder attribute '__(subclasses|mro|class)__'"),
    ("z.__class__", r"dunder attribute '__class__'"),
    ("(z > 1).__array_interface__", r"dunder attribute '__array_interface__'"),
    ("np.dtype(np.loadtxt('/etc/passwd', dtype=np.str_).item())", r"function np\.dtype"),
    ("np.loadtxt('/etc/passwd')", r"function np\.loadtxt"),
    ("np.lib.npyio.os.system('id')", r"attribute 'lib'"),
    ("x.sum()", r"attribute 'sum'"),
    ("__import__('os').system('id')", r"name '__import__'"),
    ("import os", r"not a valid expression.*syntax"),
    ("os.system('id')", r"name 'os'"),
    ("(lambda: 1)()", r"a lambda"),
    ("[v for v in (1, 2)]", r"list comprehension"),
    ("sum(v for v in (1, 2))", r"name 'sum'"),
    ("np.abs(v for v in (1, 2))", r"generator expression"),
    ("x[0]", r"subscript"),
    ("'z > 1'", r"string 'z > 1'"),
    ("z > len('abc')", r"name 'len'"),
    ("np.clip(x, a_min=1, a_max=2)", r"keyword argument a_min, a_max of np\.clip"),
    ("np.abs(x, **{'out': x})", r"keyword argument \*\* of np\.abs"),
    ("np.abs(x, x)", r"np\.abs with 2 positional argument"),
    ("np.where(z > 1)", r"np\.where with 1 positional argument"),
    ("np.abs", r"np\.abs without calling it"),
    ("np", r"name 'np'"),
    ("w > 1", r"name 'w'"),
    ("x()", r"a call of 'x'"),
    ("z if x else y", r"conditional expression"),
    ("(m := z) > 1", r"assignment expression"),
    ("x @ y", r"operator '@'"),
    ("x << 2", r"operator '<<'"),
    ("x in (1, 2)", r"operator 'in'"),
    ("x is None", r"operator 'is'"),
    ("f'{x}' == '1'", r"f-string"),
    ("x > 1j", r"constant 1j"),
    ("x > None", r"constant None"),
    ("x + " * (MAX_LENGTH // 4) + "x", rf"characters long; the limit is {MAX_LENGTH}"),
    ("-" * 100 + "x", rf"nested \d+ levels deep; the limit is {MAX_DEPTH}"),
    ("np.abs(-" * 50 + "x" + ")" * 50, rf"nested \d+ levels deep; the limit is {MAX_DEPTH}"),
    ("x > 1\x00", r"null bytes"),
]


@pytest.mark.parametrize("text, names", REFUSED, ids=[f"refused-{i}" for i in range(len(REFUSED))])
def test_refused_expressions_name_the_construct(text, names):
    with pytest.raises(ConfigError, match=names) as e:
        check_expression(text)
    assert "\n" not in str(e.value)
    z, y, x = np.ogrid[:3, :4, :5]
    with pytest.raises(ConfigError, match=names):
        evaluate_expression(text, z, y, x)


def test_refused_at_config_load_with_its_location():
    with pytest.raises(ConfigError, match=r"seed_masks\.0\.expression.*attribute 'ctypeslib'"):
        InferenceRequest.build({"seed_masks": [{"expression": "np.ctypeslib.ctypes.CDLL(None)"}]})
    with pytest.raises(ConfigError, match=r"masks\.0\.expression.*name 'open'"):
        InferenceRequest.build({"masks": [{"expression": "open('/etc/passwd')"}]})


def test_build_mask_checks_even_an_unvalidated_config():
    cfg = MaskConfig.model_construct(expression="z.__class__", volume=None, image=False, invert=False)
    with pytest.raises(ConfigError, match="dunder attribute '__class__'"):
        build_mask([cfg], np.zeros((4, 4, 4)), (0, 0, 0))


CORNER, SHAPE = (5, 0, 3), (6, 7, 8)
# expression -> the mask, written with plain numpy over the box's global coordinates
VALID = [
    ("z > 10", lambda z, y, x: z > 10),
    ("(x - 32)**2 + (y - 32)**2 < 100", lambda z, y, x: (x - 32) ** 2 + (y - 32) ** 2 < 100),
    ("(x - 6)**2 + (y - 3)**2 + (z - 8)**2 <= 9", lambda z, y, x: (x - 6) ** 2 + (y - 3) ** 2 + (z - 8) ** 2 <= 9),
    ("np.logical_and(z >= 7, x < 5)", lambda z, y, x: np.logical_and(z >= 7, x < 5)),
    ("np.abs(x - 3) <= 1", lambda z, y, x: np.abs(x - 3) <= 1),
    ("(z < 7) | (y > 4) & ~(x == 6)", lambda z, y, x: (z < 7) | (y > 4) & ~(x == 6)),
    ("(x > 4) ^ (y > 2)", lambda z, y, x: (x > 4) ^ (y > 2)),
    ("x % 2 == 0", lambda z, y, x: x % 2 == 0),
    ("z // 2 + y / 3 - -x * +1 > 7.5", lambda z, y, x: z // 2 + y / 3 - -x * +1 > 7.5),
    ("np.sqrt(np.maximum(x, y)) > np.minimum(z, 2.5)", lambda z, y, x: np.sqrt(np.maximum(x, y)) > np.minimum(z, 2.5)),
    ("np.where(z > 7, x, y) > 4", lambda z, y, x: np.where(z > 7, x, y) > 4),
    ("np.clip(x, 4, 6) == 6", lambda z, y, x: np.clip(x, 4, 6) == 6),
    ("np.round(np.sin(x * np.pi / 4), 3) > 0", lambda z, y, x: np.round(np.sin(x * np.pi / 4), 3) > 0),
    (
        "np.floor(np.log(x + 1)) >= np.ceil(np.cos(y) + np.exp(-z))",
        lambda z, y, x: np.floor(np.log(x + 1)) >= np.ceil(np.cos(y) + np.exp(-z)),
    ),
    (
        "np.logical_not(np.logical_or(x < 4, np.logical_xor(y < 2, z < 7)))",
        lambda z, y, x: np.logical_not(np.logical_or(x < 4, np.logical_xor(y < 2, z < 7))),
    ),
    ("True", lambda z, y, x: True),
    ("0", lambda z, y, x: 0),
    ("1 < 2 < z", lambda z, y, x: 2 < z),  # Python's chain: True and (2 < z)
    ("1 and y > 3", lambda z, y, x: y > 3),  # scalar first operand: Python's `and`
    # arrays in and/or/not/chains act elementwise (Python's own rule would raise)
    ("z > 6 and x < 5", lambda z, y, x: np.logical_and(z > 6, x < 5)),
    ("z > 9 or x < 5 or y == 0", lambda z, y, x: (z > 9) | (x < 5) | (y == 0)),
    ("not z > 6", lambda z, y, x: ~(z > 6)),
    ("6 < z <= 8 < x + 4", lambda z, y, x: (6 < z) & (z <= 8) & (8 < x + 4)),
]


@pytest.mark.parametrize("text, numpy_mask", VALID, ids=[v[0] for v in VALID])
def test_valid_expression_gives_the_numpy_mask(text, numpy_mask):
    z, y, x = np.ogrid[tuple(slice(c, c + s) for c, s in zip(CORNER, SHAPE))]
    expected = np.broadcast_to(np.asarray(numpy_mask(z, y, x), bool), SHAPE)
    for invert in (False, True):
        cfg = MaskConfig(expression=text, invert=invert)
        got = build_mask([cfg], np.zeros(SHAPE, np.uint8), CORNER)
        assert got.shape == SHAPE and got.dtype == bool
        assert np.array_equal(got, ~expected if invert else expected)


@pytest.mark.parametrize(
    "text, value",
    [
        ("1 and 5", 5),
        ("0 and 5", 0),
        ("0 or 2.5", 2.5),
        ("3 or 0", 3),
        ("not 0", True),
        ("(1 and 5) + 2", 7),
        ("3 > 2 > 5", False),
        ("~True", -2),
        ("2 ** -1", 0.5),
        ("10 ** 300 > 1", True),
    ],
)
def test_scalar_logic_keeps_python_values(text, value):
    got = evaluate_expression(text, 0, 0, 0)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    "text, names",
    [
        ("1 / 0", "ZeroDivisionError"),
        ("x ** -1 > 0", "Integers to negative integer powers"),
        ("x + 10 ** 300 > 0", "OverflowError"),
        ("~(x / 2) > 0", "TypeError"),
        ("9 ** 9 ** 9 > x", "integer power beyond 1024 bits"),
        ("(10 ** 300) ** 2 > x", "integer power beyond 1024"),
        ("10 ** 300 * 10 ** 300 > x", "integer beyond 1024 bits"),
    ],
)
def test_failing_arithmetic_is_a_config_error(text, names):
    z, y, x = np.ogrid[:2, :2, :2]
    with pytest.raises(ConfigError, match=rf"mask expression .*{names}"):
        evaluate_expression(text, z, y, x)


# -- neuroflood segment refuses a hostile config before any work ------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("expr")
    save_model(bright_model(delta=3), tmp / "model")
    image = str(tmp / "img.h5") + ":image"
    write_volume(image, bright_image((20, 20, 20)))
    return str(tmp / "model"), image


SHELL = "np.ctypeslib.ctypes.CDLL(None).system(b'touch {d}/pwned') == 0"
REMOVE = "np.ctypeslib.ctypes.CDLL(None).system(b'rm {d}/keep.txt') == 0"
LEAK = "np.dtype(np.loadtxt('{d}/secret.txt', dtype=np.str_).item())"
SUBCLASSES = "z.__class__.__mro__[-1].__subclasses__()[0] == 0"


def _toml(name: str, table: str, expression: str, files: dict[str, str] | None = None):
    def setup(d: Path) -> None:
        (d / name).write_text(f'checkpoint_interval = 0\n\n[[{table}]]\nexpression = "{expression.format(d=d)}"\n')
        for fname, text in (files or {}).items():
            (d / fname).write_text(text)

    return setup


def _json(name: str, expression: str):
    def setup(d: Path) -> None:
        (d / name).write_text(json.dumps({"masks": [{"expression": expression.format(d=d)}]}))

    return setup


def _not_created(d: Path) -> None:
    assert not (d / "pwned").exists(), "the expression ran a shell command"


def _kept(d: Path) -> None:
    assert (d / "keep.txt").read_text() == "keep"


def _cases():
    def seg(*extra):
        return ["segment", "--model", "{model}", "--image", "{image}", "--out", "{d}/seg.h5:segmentation", "--no-progress", *extra]

    return [
        Case(
            "toml-shell-command",
            seg("--config", "{d}/bad.toml"),
            r"seed_masks\.0\.expression.*attribute 'ctypeslib'",
            setup=_toml("bad.toml", "seed_masks", SHELL),
            after=_not_created,
            code=2,
        ),
        Case(
            "set-shell-command",
            seg("--set", 'seed_masks=[{"expression": "' + SHELL + '"}]'),
            r"seed_masks\.0\.expression.*attribute 'ctypeslib'",
            after=_not_created,
            code=2,
        ),
        Case(
            "json-remove-a-file",
            seg("--config", "{d}/bad.json"),
            r"masks\.0\.expression.*attribute 'ctypeslib'",
            setup=lambda d: (_json("bad.json", REMOVE)(d), (d / "keep.txt").write_text("keep")),
            after=_kept,
            code=2,
        ),
        Case(
            "toml-file-leak",
            seg("--config", "{d}/leak.toml"),
            r"masks\.0\.expression.*function np\.dtype",
            setup=_toml("leak.toml", "masks", LEAK, {"secret.txt": "TOPSECRET"}),
            code=2,
        ),
        Case(
            "set-subclasses",
            seg("--set", 'masks=[{"expression": "' + SUBCLASSES + '"}]'),
            r"masks\.0\.expression.*dunder attribute '__(subclasses|mro|class)__'",
            code=2,
        ),
    ]


@pytest.mark.parametrize("case", [c.param() for c in _cases()])
def test_segment_refuses_a_hostile_expression(case, inputs, tmp_path, capsys):
    model, image = inputs
    case.argv = [a.replace("{model}", model).replace("{image}", image) for a in case.argv]
    line = check_refused(case, tmp_path, capsys)
    assert "TOPSECRET" not in line and "\n" not in line


def test_segment_with_a_valid_expression_still_runs(inputs, tmp_path, capsys):
    from badinput import run_cli

    model, image = inputs
    out = f"{tmp_path}/seg.h5:segmentation"
    code, _, err = run_cli(
        [
            "segment",
            "--model",
            model,
            "--image",
            image,
            "--out",
            out,
            "--no-progress",
            "--set",
            "checkpoint_interval=0",
            "--set",
            "options.min_segment_size=5",
            "--set",
            'seed_masks=[{"expression": "np.abs(x - 10) > 100"}]',
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "seg.h5").exists()
