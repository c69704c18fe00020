"""Mask expressions: a small arithmetic language over the global coordinates z, y, x.

Inference configs travel between labs, so a mask ``expression`` is untrusted input. It is
never given to Python's ``eval``: :func:`check_expression` parses it with :mod:`ast` and
accepts only the grammar below; :func:`evaluate_expression` then interprets that tree itself.

Allowed:

* numbers (``3``, ``2.5``, ``1e3``, ``True``, ``False``) and the names ``z``, ``y``, ``x``;
* ``+ - * / // % **``, unary ``-``/``+``, comparisons (also chained: ``2 <= z < 9``),
  ``and or not`` and the elementwise ``& | ^ ~``, parentheses;
* the constants ``np.pi``, ``np.e`` and calls ``np.NAME(a, b, ...)`` (positional arguments
  only) of the functions in :data:`FUNCTIONS`.

``and``/``or``/``not`` and chained comparisons act elementwise once an operand is an array
(Python's own rules would raise "truth value of an array is ambiguous"); on plain numbers
they keep Python's meaning, so every expression that worked with ``eval`` gives the same value.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError

MAX_LENGTH = 500  # characters
MAX_DEPTH = 64  # nesting of the syntax tree (a | b | c ... adds one level per operator)
MAX_INT_BITS = 1024  # pure-integer arithmetic beyond this (10**10**10) would hang or exhaust memory

# name -> (function, fewest, most positional arguments). Counts stop before numpy's positional
# ``out`` argument, which would write into z, y or x.
FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "abs": (np.abs, 1, 1),
    "sqrt": (np.sqrt, 1, 1),
    "exp": (np.exp, 1, 1),
    "log": (np.log, 1, 1),
    "sin": (np.sin, 1, 1),
    "cos": (np.cos, 1, 1),
    "floor": (np.floor, 1, 1),
    "ceil": (np.ceil, 1, 1),
    "round": (np.round, 1, 2),
    "clip": (np.clip, 3, 3),
    "minimum": (np.minimum, 2, 2),
    "maximum": (np.maximum, 2, 2),
    "where": (np.where, 3, 3),  # the 1-argument form returns indices, not a mask
    "logical_and": (np.logical_and, 2, 2),
    "logical_or": (np.logical_or, 2, 2),
    "logical_not": (np.logical_not, 1, 1),
    "logical_xor": (np.logical_xor, 2, 2),
}
CONSTANTS: dict[str, float] = {"pi": float(np.pi), "e": float(np.e)}
NAMES = ("z", "y", "x")

_BINARY: dict[type, tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
    ast.BitAnd: ("&", operator.and_),
    ast.BitOr: ("|", operator.or_),
    ast.BitXor: ("^", operator.xor),
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_OPERATOR_TEXT = {
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}
_CONSTRUCT_TEXT = {
    ast.Subscript: "a subscript [...]",
    ast.Slice: "a slice",
    ast.Lambda: "a lambda",
    ast.ListComp: "a list comprehension",
    ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.IfExp: "a conditional expression (a if c else b)",
    ast.NamedExpr: "an assignment expression (:=)",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Set: "a set",
    ast.Dict: "a dict",
    ast.Starred: "a starred argument",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}
ALLOWED = (
    "numbers, z, y, x, + - * / // % **, comparisons, and/or/not, & | ^ ~, parentheses, np.pi, np.e and "
    "np.NAME(...) with positional arguments for NAME in " + ", ".join(FUNCTIONS) + " (docs/inference.md)"
)


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _refuse(text: str, what: str) -> ConfigError:
    return ConfigError(f"mask expression {_short(text)} uses {what}, which is not allowed; allowed: {ALLOWED}")


def _depth(tree: ast.AST) -> int:
    """Nesting depth of ``tree``, without recursion (the tree may be deep)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _check(node: ast.AST, text: str) -> None:
    """Raise ConfigError naming the first construct of ``node`` outside the grammar."""
    if isinstance(node, ast.Expression):
        _check(node.body, text)
    elif isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, str):
            raise _refuse(text, f"the string {_short(v)}")
        if not isinstance(v, (bool, int, float)):
            raise _refuse(text, f"the constant {v!r} ({type(v).__name__})")
    elif isinstance(node, ast.Name):
        if node.id not in NAMES:
            raise _refuse(text, f"the name {node.id!r}")
    elif isinstance(node, ast.Attribute):
        if not (isinstance(node.value, ast.Name) and node.value.id == "np"):
            _check(node.value, text)  # np.ctypeslib.ctypes...: name the innermost attribute
            raise _refuse(text, f"the attribute {node.attr!r}")
        if node.attr in FUNCTIONS:
            raise _refuse(text, f"np.{node.attr} without calling it")
        if node.attr not in CONSTANTS:
            raise _refuse(text, f"the attribute {node.attr!r} of np")
    elif isinstance(node, ast.Call):
        f = node.func
        if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "np"):
            _check(f, text)  # names what is called: an attribute, a lambda, an unknown name
            raise _refuse(text, f"a call of {_short(ast.unparse(f))}")
        if f.attr not in FUNCTIONS:
            raise _refuse(text, f"the function np.{f.attr}")
        if node.keywords:
            names = ", ".join(k.arg or "**" for k in node.keywords)
            raise _refuse(text, f"the keyword argument {names} of np.{f.attr}")
        _, lo, hi = FUNCTIONS[f.attr]
        for a in node.args:
            _check(a, text)
        if not lo <= len(node.args) <= hi:
            n = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ConfigError(
                f"mask expression {_short(text)} calls np.{f.attr} with {len(node.args)} positional argument(s); np.{f.attr} takes {n} here"
            )
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise _refuse(text, f"the operator {_OPERATOR_TEXT.get(type(node.op), type(node.op).__name__)!r}")
        _check(node.left, text)
        _check(node.right, text)
    elif isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.Not) and type(node.op) not in _UNARY:
            raise _refuse(text, f"the operator {type(node.op).__name__}")
        _check(node.operand, text)
    elif isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, text)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise _refuse(text, f"the operator {_OPERATOR_TEXT.get(type(op), type(op).__name__)!r}")
        for v in (node.left, *node.comparators):
            _check(v, text)
    else:
        raise _refuse(text, _CONSTRUCT_TEXT.get(type(node), type(node).__name__))


def check_expression(text: str) -> ast.Expression:
    """Parse mask expression ``text`` and check it against the grammar; the checked tree.

    Raises ConfigError naming the offending construct (attribute, name, call, ...).
    """
    if not isinstance(text, str):
        raise ConfigError(f"a mask expression must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"mask expression {_short(text)} is {len(text)} characters long; the limit is {MAX_LENGTH}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"mask expression {_short(text)} is not a valid expression: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes; pathological nesting
        raise ConfigError(f"mask expression {_short(text)} cannot be parsed: {type(e).__name__}: {e}") from None
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise ConfigError(f"mask expression {_short(text)} is nested {depth} levels deep; the limit is {MAX_DEPTH}, simplify it")
    for node in ast.walk(tree):  # a dunder is how sandbox escapes start: name it first
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
        if name.startswith("__"):
            raise _refuse(text, f"the dunder {'attribute' if isinstance(node, ast.Attribute) else 'name'} {name!r}")
    _check(tree, text)
    return tree


def _is_int(v: Any) -> bool:
    return isinstance(v, int)  # Python ints (and bools): unbounded size


def _binary(op: ast.operator, a: Any, b: Any, text: str) -> Any:
    sym, fn = _BINARY[type(op)]
    # (bits(a) - 1) * b bounds bits(a ** b) from below: refuse before computing a huge power
    if sym == "**" and _is_int(a) and _is_int(b) and b > 0 and abs(a) > 1 and (abs(a).bit_length() - 1) * b > MAX_INT_BITS:
        raise ConfigError(f"mask expression {_short(text)} computes an integer power beyond {MAX_INT_BITS} bits")
    out = fn(a, b)
    if _is_int(out) and out.bit_length() > MAX_INT_BITS:
        raise ConfigError(f"mask expression {_short(text)} computes an integer beyond {MAX_INT_BITS} bits")
    return out


def _scalar(v: Any) -> bool:
    return np.ndim(v) == 0


def _and(acc: Any, nxt: Callable[[], Any]) -> tuple[Any, bool]:
    """One step of ``acc and next``: (value, stop). Python's rule on scalars, elementwise on arrays."""
    if _scalar(acc):
        return (acc, True) if not acc else (nxt(), False)
    return np.logical_and(acc, nxt()), False


def _or(acc: Any, nxt: Callable[[], Any]) -> tuple[Any, bool]:
    if _scalar(acc):
        return (acc, True) if acc else (nxt(), False)
    return np.logical_or(acc, nxt()), False


def _eval(node: ast.AST, env: dict[str, Any], text: str) -> Any:
    """Interpret a tree that :func:`_check` accepted (recursion is bounded by MAX_DEPTH)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Attribute):
        return CONSTANTS[node.attr]
    if isinstance(node, ast.Call):
        fn = FUNCTIONS[node.func.attr][0]  # type: ignore[attr-defined]
        return fn(*(_eval(a, env, text) for a in node.args))
    if isinstance(node, ast.BinOp):
        return _binary(node.op, _eval(node.left, env, text), _eval(node.right, env, text), text)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env, text)
        if isinstance(node.op, ast.Not):
            return (not v) if _scalar(v) else np.logical_not(v)
        return _UNARY[type(node.op)](v)
    if isinstance(node, ast.BoolOp):
        step = _and if isinstance(node.op, ast.And) else _or
        acc = _eval(node.values[0], env, text)
        for v in node.values[1:]:
            acc, stop = step(acc, lambda v=v: _eval(v, env, text))
            if stop:
                break
        return acc
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env, text)
        acc: Any = None
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, env, text)
            res = _COMPARE[type(op)](left, right)
            if acc is None:
                acc = res
            else:
                acc, _ = _and(acc, lambda res=res: res)
            if _scalar(acc) and not acc:  # Python stops a chain at the first false link
                return acc
            left = right
        return acc
    raise AssertionError(f"unchecked node {type(node).__name__}")  # _check refuses every other node


def evaluate_expression(text: str, z: Any, y: Any, x: Any) -> Any:
    """Value of mask expression ``text`` with coordinates ``z``, ``y``, ``x`` (e.g. np.ogrid arrays).

    Raises ConfigError if the expression is outside the grammar or its arithmetic fails.
    """
    tree = check_expression(text)
    try:
        with np.errstate(all="ignore"):  # sqrt(-1) -> nan, 1/0. -> inf, as numpy gives them
            return _eval(tree.body, {"z": z, "y": y, "x": x}, text)
    except ConfigError:
        raise
    except (ArithmeticError, ValueError, TypeError, MemoryError) as e:
        raise ConfigError(f"mask expression {_short(text)} failed: {type(e).__name__}: {e}") from None
