"""Sound bounds of a colour expression over many small ranges of ``v`` at once.

:func:`bound` walks the expression tree with the interval arithmetic of :mod:`.intervals` (one
interval per lookup-table cell); :mod:`.lut` uses it to prove cells exact.
"""

from __future__ import annotations

import ast

import numpy as np

from dumpunet.analyzer.color.expressions import FUNCTIONS, Expression, evaluate
from dumpunet.analyzer.color.intervals import (  # the operations the tree walk dispatches to
    _abs,
    _add,
    _div,
    _floordiv,
    _fmod,
    _hypot,
    Interval,
    _minmax,
    _mod,
    _monotone,
    _mul,
    _neg,
    _periodic,
    _pow,
    _sigmoid,
    _sub,
    _tan,
    _where,
)

__all__ = ["bound"]


def _compare(op: type, a: Interval, b: Interval) -> Interval:
    """A comparison gives 1.0 or 0.0; with a NaN operand it is false (``!=``: true)."""
    if op is ast.Lt:
        yes, no = a.hi < b.lo, a.lo >= b.hi
    elif op is ast.LtE:
        yes, no = a.hi <= b.lo, a.lo > b.hi
    elif op is ast.Gt:
        yes, no = a.lo > b.hi, a.hi <= b.lo
    elif op is ast.GtE:
        yes, no = a.lo >= b.hi, a.hi < b.lo
    else:
        eq_yes = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo)
        eq_no = (a.hi < b.lo) | (a.lo > b.hi)
        yes, no = (eq_yes, eq_no) if op is ast.Eq else (eq_no, eq_yes)
    some = ~(a.empty | b.empty)
    nan_value = 1.0 if op is ast.NotEq else 0.0
    maybe_nan = a.nan | b.nan
    can_be_1 = (some & ~no) | (maybe_nan & (nan_value == 1.0))
    can_be_0 = (some & ~yes) | (maybe_nan & (nan_value == 0.0))
    lo = np.where(can_be_0, 0.0, 1.0)
    hi = np.where(can_be_1, 1.0, 0.0)
    return Interval(lo, hi, np.zeros(lo.shape, bool))


_BINARY = {
    ast.Add: _add, ast.Sub: _sub, ast.Mult: _mul, ast.Div: _div, ast.Pow: _pow, ast.Mod: _mod, ast.FloorDiv: _floordiv,
}
_CALLS2 = {"power": _pow, "fmod": _fmod, "hypot": _hypot}

_UNARY = {
    "abs": _abs,
    "sqrt": lambda a: _monotone(np.sqrt, a, domain_lo=0.0, exact=True),
    "exp": lambda a: _monotone(np.exp, a),
    "log": lambda a: _monotone(np.log, a, domain_lo=0.0),
    "log2": lambda a: _monotone(np.log2, a, domain_lo=0.0),
    "log10": lambda a: _monotone(np.log10, a, domain_lo=0.0),
    "square": lambda a: _monotone(np.square, _abs(a), exact=True),
    "tanh": lambda a: _monotone(np.tanh, a),
    "sinh": lambda a: _monotone(np.sinh, a),
    "cosh": lambda a: _monotone(np.cosh, _abs(a)),
    "arctan": lambda a: _monotone(np.arctan, a),
    "arcsin": lambda a: _monotone(np.arcsin, a, domain_lo=-1.0, domain_hi=1.0),
    # arccos decreases: arccos(x) is the increasing arccos(-y) at y = -x (negation is exact).
    "arccos": lambda a: _monotone(lambda y: np.arccos(np.negative(y)), _neg(a), domain_lo=-1.0, domain_hi=1.0),
    "floor": lambda a: _monotone(np.floor, a, exact=True),
    "ceil": lambda a: _monotone(np.ceil, a, exact=True),
    "sign": lambda a: _monotone(np.sign, a, exact=True),
    "sin": lambda a: _periodic(np.sin, a, np.pi / 2, -np.pi / 2, 2 * np.pi),
    "cos": lambda a: _periodic(np.cos, a, 0.0, np.pi, 2 * np.pi),
    "tan": _tan,
    "sigmoid": _sigmoid,
}


def _uses_v(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "v" for n in ast.walk(node))


def _bound(node: ast.expr, v: Interval) -> Interval:
    n = v.lo.shape[0]
    if not _uses_v(node):
        # A constant subtree: the exact path computes this very scalar.
        return Interval.point(float(evaluate(Expression("", node, False), np.zeros(()))), n)
    if isinstance(node, ast.Name):
        return v
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_bound(node.left, v), _bound(node.right, v))
    if isinstance(node, ast.UnaryOp):
        x = _bound(node.operand, v)
        return _neg(x) if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.Compare):
        left = _bound(node.left, v)
        result = None
        for op, sub in zip(node.ops, node.comparators, strict=True):
            right = _bound(sub, v)
            test = _compare(type(op), left, right)
            result = test if result is None else _minmax(np.minimum, result, test)
            left = right
        assert result is not None
        return result
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        name = FUNCTIONS[node.func.id][0]
        args = [_bound(arg, v) for arg in node.args]
        if name in _UNARY:
            return _UNARY[name](args[0])
        if name == "minimum":
            return _minmax(np.minimum, *args)
        if name == "maximum":
            return _minmax(np.maximum, *args)
        if name == "clip":
            return _minmax(np.minimum, _minmax(np.maximum, args[0], args[1]), args[2])
        if name == "where":
            return _where(*args)
        if name in _CALLS2:
            return _CALLS2[name](*args)
        if name == "round":
            # rint(x * 10**d) / 10**d (or the mirror for d < 0): every step is monotone.
            d = int(evaluate(Expression("", node.args[1], False), np.zeros(()))) if len(args) == 2 else 0
            return _monotone(lambda x: np.round(x, d), args[0], exact=True)
    if isinstance(node, ast.IfExp):
        return _where(_bound(node.test, v), _bound(node.body, v), _bound(node.orelse, v))
    if isinstance(node, ast.BoolOp):
        # Python's and/or on one float: "a and b" is b where a is true (non-zero or NaN), else a,
        # which is then a zero; "a or b" is a where a is true, else b.
        result = _bound(node.values[0], v)
        for sub in node.values[1:]:
            nxt = _bound(sub, v)
            if isinstance(node.op, ast.And):
                result = _where(result, nxt, Interval.point(0.0, n))
            else:
                result = _where(result, result, nxt)
        return result
    raise AssertionError(f"no interval rule for {ast.dump(node)}")


def bound(expr: Expression, lo: np.ndarray, hi: np.ndarray) -> Interval:
    """Bound ``evaluate(expr, v)`` for every float ``v`` in ``[lo[i], hi[i]]``, per ``i``."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    with np.errstate(all="ignore"):
        return _bound(expr.tree, Interval(lo, hi, np.zeros(lo.shape, bool)))
