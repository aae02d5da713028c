"""Colour expressions in ``v``: a whitelisted subset of Python, parsed with :mod:`ast`, never eval'd.

The original web-UI extension ran ``eval(f"lambda v: ({r})", {"__builtins__": numpy})`` on
whatever the user typed. Here the text is parsed with ``ast.parse(mode="eval")`` and every node
is checked against the grammar below; anything else is an :class:`ExpressionError` with a caret
under the offending part. A validated expression is evaluated by walking its tree with numpy
(:func:`evaluate`): this is the exact semantics that the fast lookup-table path in
:mod:`dumpunet.analyzer.color.lut` reproduces.

=========================  =====================================================================
numbers                    ``1``, ``0.5``, ``2e-3`` (all arithmetic is float64)
names                      ``v`` (the transformed feature value), ``pi``, ``e``
operators                  ``+ - * / // ** %``, unary ``-`` and ``+``
comparisons                ``< <= > >= == !=``, chains like ``0 < v < 0.5``; they give 1.0 or 0.0
conditions                 ``a if c else b``, ``a and b``, ``a or b`` (Python's meaning, see below)
functions                  one argument: ``abs sqrt square exp log log2 log10 sin cos tan arcsin
                           arccos arctan sinh cosh tanh floor ceil sign sigmoid`` (aliases ``asin
                           acos atan``); ``round(x)`` or ``round(x, n)`` with a whole number n;
                           two: ``minimum maximum min max power fmod hypot``; three:
                           ``clip(x, lo, hi)`` and ``where(c, a, b)``
=========================  =====================================================================

Numpy semantics throughout: ``1/0`` is inf, ``log(-1)`` and ``0/0`` are NaN, no exception and no
warning. ``min``/``max`` are :func:`numpy.minimum`/:func:`numpy.maximum` (NaN wins),
``clip(x, lo, hi)`` is ``minimum(maximum(x, lo), hi)``, ``where(c, a, b)`` picks ``a`` where
``c != 0`` (NaN counts as true, as in numpy), ``sigmoid(x)`` is ``1 / (1 + exp(-x))``,
``round`` rounds half to even (:func:`numpy.round`), ``//`` is :func:`numpy.floor_divide`.
The original evaluated expressions on one value at a time, so Python's conditionals worked
there; here they mean the same per element: ``a if c else b`` is ``where(c, a, b)``,
``a and b`` is ``b`` where ``a`` is true (non-zero or NaN) and ``a`` elsewhere, ``a or b`` is
``a`` where ``a`` is true and ``b`` elsewhere.

Examples
--------
>>> evaluate(parse_expression("clip(2*v, 0, 1)"), np.array([-1.0, 0.25, 3.0]))
array([0. , 0.5, 1. ])
>>> parse_expression("v.__class__")
Traceback (most recent call last):
...
dumpunet.errors.ExpressionError: bad expression: attribute access '.__class__' is not allowed
  v.__class__
  ^^^^^^^^^^^
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dumpunet.errors import ExpressionError

__all__ = ["FUNCTIONS", "Expression", "evaluate", "parse_expression"]

MAX_LENGTH = 1000

MAX_DEPTH = 100
"""Deepest nesting of operators and calls; the checker, the evaluator and the interval code recurse."""

CONSTANTS: dict[str, float] = {"pi": float(np.pi), "e": float(np.e)}


def _sigmoid(x):
    return np.true_divide(1.0, np.add(1.0, np.exp(np.negative(x))))


def _clip(x, lo, hi):
    return np.minimum(np.maximum(x, lo), hi)


def _where(c, a, b):
    return np.where(np.not_equal(c, 0.0), a, b)


def _round(x, decimals=0.0):
    return np.round(x, int(decimals))


# name -> (canonical name, number of arguments, numpy implementation); round takes 1 or 2
FUNCTIONS: dict[str, tuple[str, int, Callable[..., np.ndarray]]] = {
    "abs": ("abs", 1, np.abs),
    "sqrt": ("sqrt", 1, np.sqrt),
    "square": ("square", 1, np.square),
    "round": ("round", 1, _round),
    "arcsin": ("arcsin", 1, np.arcsin),
    "asin": ("arcsin", 1, np.arcsin),
    "arccos": ("arccos", 1, np.arccos),
    "acos": ("arccos", 1, np.arccos),
    "sinh": ("sinh", 1, np.sinh),
    "cosh": ("cosh", 1, np.cosh),
    "power": ("power", 2, np.power),
    "fmod": ("fmod", 2, np.fmod),
    "hypot": ("hypot", 2, np.hypot),
    "exp": ("exp", 1, np.exp),
    "log": ("log", 1, np.log),
    "log2": ("log2", 1, np.log2),
    "log10": ("log10", 1, np.log10),
    "sin": ("sin", 1, np.sin),
    "cos": ("cos", 1, np.cos),
    "tan": ("tan", 1, np.tan),
    "tanh": ("tanh", 1, np.tanh),
    "arctan": ("arctan", 1, np.arctan),
    "atan": ("arctan", 1, np.arctan),
    "floor": ("floor", 1, np.floor),
    "ceil": ("ceil", 1, np.ceil),
    "sign": ("sign", 1, np.sign),
    "sigmoid": ("sigmoid", 1, _sigmoid),
    "minimum": ("minimum", 2, np.minimum),
    "maximum": ("maximum", 2, np.maximum),
    "min": ("minimum", 2, np.minimum),
    "max": ("maximum", 2, np.maximum),
    "clip": ("clip", 3, _clip),
    "where": ("where", 3, _where),
}

BINARY: dict[type, tuple[str, Callable[..., np.ndarray]]] = {
    ast.Add: ("+", np.add),
    ast.Sub: ("-", np.subtract),
    ast.Mult: ("*", np.multiply),
    ast.Div: ("/", np.true_divide),
    ast.Pow: ("**", np.power),
    ast.Mod: ("%", np.remainder),
    ast.FloorDiv: ("//", np.floor_divide),
}

COMPARE: dict[type, tuple[str, Callable[..., np.ndarray]]] = {
    ast.Lt: ("<", np.less),
    ast.LtE: ("<=", np.less_equal),
    ast.Gt: (">", np.greater),
    ast.GtE: (">=", np.greater_equal),
    ast.Eq: ("==", np.equal),
    ast.NotEq: ("!=", np.not_equal),
}

_OPERATOR_TEXT: dict[type, str] = {
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.Invert: "~",
    ast.Not: "not",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}

_FORBIDDEN: dict[type, str] = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "subscripts like v[0] are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.JoinedStr: "strings are not allowed (only numbers)",
    ast.NamedExpr: "':=' is not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
}

_ALLOWED_FUNCTIONS = ", ".join(sorted(FUNCTIONS))


@dataclass(frozen=True)
class Expression:
    """A validated colour expression: its text and its checked syntax tree.

    Build one with :func:`parse_expression`; ``uses_v`` is False for constants like ``"0.5"``.
    """

    text: str
    tree: ast.expr = field(compare=False, repr=False)
    uses_v: bool = field(compare=False, repr=False)


def _char_offset(text: str, lineno: int, col_byte: int) -> int:
    """Turn ast's (1-based line, UTF-8 byte column) into an offset into ``text``."""
    lines = text.split("\n")
    start = sum(len(line) + 1 for line in lines[: lineno - 1])
    line = lines[lineno - 1] if lineno - 1 < len(lines) else ""
    return start + len(line.encode("utf-8")[:col_byte].decode("utf-8", errors="ignore"))


class _Checker:
    def __init__(self, text: str, lead: int, name: str | None) -> None:
        self.text = text
        self.body = text[lead:]
        self.lead = lead
        self.prefix = f"{name}: " if name else ""
        self.uses_v = False

    def fail(self, message: str, node: ast.AST) -> ExpressionError:
        start = self.lead + _char_offset(self.body, node.lineno, node.col_offset)  # type: ignore[attr-defined]
        end = self.lead + _char_offset(self.body, node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        return ExpressionError(self.prefix + message, self.text, start, length=max(1, end - start))

    def check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                raise self.fail(f"{value} is not allowed (use {float(value)})", node)
            if isinstance(value, (str, bytes)):
                raise self.fail("strings are not allowed (only numbers)", node)
            if isinstance(value, complex):
                raise self.fail("complex numbers are not allowed", node)
            if not isinstance(value, (int, float)):
                raise self.fail(f"{value!r} is not allowed (only numbers)", node)
            if isinstance(value, int) and abs(value) > 2**1023:
                raise self.fail("number too large", node)
        elif isinstance(node, ast.Name):
            if node.id == "v":
                self.uses_v = True
            elif node.id in CONSTANTS:
                pass
            elif node.id in FUNCTIONS:
                raise self.fail(f"'{node.id}' is a function: call it, like {node.id}(v)", node)
            else:
                raise self.fail(f"name '{node.id}' is not allowed (use v, pi or e)", node)
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in BINARY:
                op = _OPERATOR_TEXT.get(type(node.op), type(node.op).__name__)
                raise self.fail(f"operator '{op}' is not allowed (allowed: + - * / // ** %)", node)
            self.check(node.left)
            self.check(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                op = _OPERATOR_TEXT.get(type(node.op), type(node.op).__name__)
                hint = " (use 1 - c)" if isinstance(node.op, ast.Not) else ""
                raise self.fail(f"operator '{op}' is not allowed{hint}", node)
            self.check(node.operand)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in COMPARE:
                    text = _OPERATOR_TEXT.get(type(op), type(op).__name__)
                    raise self.fail(f"operator '{text}' is not allowed (allowed: < <= > >= == !=)", node)
            self.check(node.left)
            for sub in node.comparators:
                self.check(sub)
        elif isinstance(node, ast.Call):
            self.check_call(node)
        elif isinstance(node, ast.IfExp):
            for sub in (node.test, node.body, node.orelse):
                self.check(sub)
        elif isinstance(node, ast.BoolOp):
            for sub in node.values:
                self.check(sub)
        else:
            message = _FORBIDDEN.get(type(node), f"'{type(node).__name__}' is not allowed")
            if isinstance(node, ast.Attribute):
                message = f"attribute access '.{node.attr}' is not allowed"
            raise self.fail(message, node)

    def check_call(self, node: ast.Call) -> None:
        func = node.func
        if not isinstance(func, ast.Name):
            if isinstance(func, ast.Attribute):
                raise self.fail(f"attribute access '.{func.attr}' is not allowed", func)
            raise self.fail("only the listed functions can be called, by name", func)
        if func.id not in FUNCTIONS:
            what = "'v' is not a function" if func.id == "v" else f"function '{func.id}' is not allowed"
            raise self.fail(f"{what} (allowed: {_ALLOWED_FUNCTIONS})", func)
        if node.keywords:
            raise self.fail("keyword arguments are not allowed", node.keywords[0])
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.fail("'*' unpacking is not allowed", arg)
        _, arity, _ = FUNCTIONS[func.id]
        if func.id == "round" and len(node.args) in (1, 2):
            digits = node.args[1] if len(node.args) == 2 else ast.Constant(0)
            if isinstance(digits, ast.UnaryOp) and isinstance(digits.op, (ast.USub, ast.UAdd)):
                digits = digits.operand
            if not (isinstance(digits, ast.Constant) and type(digits.value) is int and digits.value <= 15):
                message = "round()'s second argument must be a whole number of digits from -15 to 15, like 2"
                raise self.fail(message, node.args[1])
        elif func.id == "round":
            raise self.fail(f"round() takes 1 or 2 arguments, got {len(node.args)}", node)
        elif len(node.args) != arity:
            noun = "argument" if arity == 1 else "arguments"
            raise self.fail(f"{func.id}() takes {arity} {noun}, got {len(node.args)}", node)
        for arg in node.args:
            self.check(arg)


def parse_expression(text: str, *, name: str | None = None) -> Expression:
    """Parse and validate a colour expression; raise :class:`ExpressionError` with a caret if bad.

    ``name`` (like ``"H"``) prefixes the message, so the user knows which field is wrong.

    >>> parse_expression("(2+v)/3").uses_v
    True
    >>> parse_expression("x + 1")
    Traceback (most recent call last):
    ...
    dumpunet.errors.ExpressionError: bad expression: name 'x' is not allowed (use v, pi or e)
      x + 1
      ^
    """
    prefix = f"{name}: " if name else ""
    if len(text) > MAX_LENGTH:
        message = f"{prefix}expression is too long ({len(text)} characters, at most {MAX_LENGTH})"
        raise ExpressionError(message, text, MAX_LENGTH)
    body = text.lstrip()
    lead = len(text) - len(body)
    if not body.strip():
        raise ExpressionError(f"{prefix}expression is empty (write one in v, like abs(v))", text, len(text))
    if "\0" in text:  # ast.parse refuses it without a position
        raise ExpressionError(f"{prefix}the null character is not allowed", text, text.index("\0"))
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError as err:
        lines = body.split("\n")
        lineno = err.lineno or 1
        offset = (err.offset or 1) - 1
        pos = lead + sum(len(line) + 1 for line in lines[: lineno - 1]) + offset
        length = 1
        if err.end_lineno == lineno and err.end_offset and err.end_offset - 1 > offset:
            length = err.end_offset - 1 - offset
        raise ExpressionError(f"{prefix}{err.msg}", text, pos, length=length) from None
    except (ValueError, RecursionError, MemoryError) as err:  # e.g. huge literals, deep nesting
        raise ExpressionError(f"{prefix}cannot parse: {err}", text, lead) from None
    checker = _Checker(text, lead, name)
    deep = _too_deep(tree.body)
    if deep is not None:
        raise checker.fail(f"expression nests more than {MAX_DEPTH} levels deep", deep)
    checker.check(tree.body)
    return Expression(text, tree.body, checker.uses_v)


def _too_deep(root: ast.AST) -> ast.AST | None:
    """The first node nested deeper than :data:`MAX_DEPTH`, found without recursion; None if there is none."""
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return node
        for child in ast.iter_child_nodes(node):  # operators and contexts are no level (and have no position)
            stack.append((child, depth + 1) if isinstance(child, ast.expr) else (child, depth))
    return None


def _eval(node: ast.expr, v: np.ndarray):
    if isinstance(node, ast.Constant):
        return np.float64(node.value)
    if isinstance(node, ast.Name):
        return v if node.id == "v" else np.float64(CONSTANTS[node.id])
    if isinstance(node, ast.BinOp):
        return BINARY[type(node.op)][1](_eval(node.left, v), _eval(node.right, v))
    if isinstance(node, ast.UnaryOp):
        x = _eval(node.operand, v)
        return np.negative(x) if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.Compare):
        left = _eval(node.left, v)
        result = None
        for op, sub in zip(node.ops, node.comparators, strict=True):
            right = _eval(sub, v)
            test = COMPARE[type(op)][1](left, right)
            result = test if result is None else np.logical_and(result, test)
            left = right
        return np.asarray(result, dtype=np.float64)[()]
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return FUNCTIONS[node.func.id][2](*(_eval(arg, v) for arg in node.args))
    if isinstance(node, ast.IfExp):
        return np.where(np.not_equal(_eval(node.test, v), 0.0), _eval(node.body, v), _eval(node.orelse, v))
    if isinstance(node, ast.BoolOp):
        result = _eval(node.values[0], v)
        for sub in node.values[1:]:
            true = np.not_equal(result, 0.0)  # Python's truth of a float: non-zero or NaN
            nxt = _eval(sub, v)
            result = np.where(true, nxt, result) if isinstance(node.op, ast.And) else np.where(true, result, nxt)
        return result
    raise AssertionError(f"unvalidated node {type(node).__name__}")  # parse_expression let it through


def evaluate(expr: Expression | str, v: np.ndarray) -> np.ndarray:
    """Evaluate ``expr`` at every element of ``v``; return a new float64 array of ``v``'s shape.

    This is the exact semantics of an expression (and the reference for the lookup tables).

    >>> evaluate("where(v > 0, 1/v, -1)", np.array([2.0, 0.0, -3.0]))
    array([ 0.5, -1. , -1. ])
    """
    if isinstance(expr, str):
        expr = parse_expression(expr)
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(all="ignore"):
        out = _eval(expr.tree, v)
    return np.array(np.broadcast_to(out, v.shape), dtype=np.float64)
