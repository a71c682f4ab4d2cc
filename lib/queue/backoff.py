"""QStash's retry delays, in one place for the detached worker's re-publishes and the dev broker.

https://upstash.com/docs/qstash/features/retry:
- the default backoff: "n = how many times this request has been retried; delay =
  min(86400, e ** (2.5*n)) // in seconds" (12 s, 2 min 28 s, 30 min 8 s, ...);
- `Upstash-Retry-Delay` (JOB_RETRY_DELAY): an expression in milliseconds of `retried` (0 for the
  first retry) with pow sqrt abs exp floor ceil round min max, which replaces the backoff;
- a `Retry-After` answer replaces both.
`retry_delay` applies the same rules to a detached job's retry, so a job is retried on the same
schedule in both execution modes.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

# Each delay is capped at one day.
MAX_DELAY_SECONDS = 86400.0
MAX_EXPRESSION_LENGTH = 256


class RetryDelayError(ValueError):
    """A retry delay expression QStash would refuse; the message is the reason."""


def backoff_seconds(n: int) -> float:
    """QStash's default delay before the n-th retry (n >= 1): min(86400, e^(2.5 n)) seconds."""
    return min(MAX_DELAY_SECONDS, math.exp(min(2.5 * max(0, n), 50.0)))


def retry_delay(expression: str, attempt: int, asked: float | None = None) -> float:
    """Seconds before retrying a job whose attempt number `attempt` (>= 1) failed, as QStash
    would space it: `asked` (a Retry-After) when given, else `expression` (JOB_RETRY_DELAY, ms)
    when set, else the default backoff; at most a day. Raises RetryDelayError for a bad
    expression."""
    if asked is not None:
        delay = asked
    elif expression:
        delay = evaluate_retry_delay(expression, max(0, attempt - 1)) / 1000
    else:
        delay = backoff_seconds(attempt)
    return min(MAX_DELAY_SECONDS, max(0.0, delay))


_FUNCTIONS: dict[str, Callable[..., float]] = {
    "pow": math.pow,
    "sqrt": math.sqrt,
    "abs": abs,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
    "round": round,
    "min": min,
    "max": max,
}
_OPERATORS: dict[type[ast.AST], Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    # math.pow works on floats, so a huge power overflows at once instead of growing an int.
    ast.Pow: math.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _evaluate(node: ast.AST, retried: int) -> float:
    value = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(node, ast.Name) and node.id == "retried":
        return float(retried)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left, retried), _evaluate(node.right, retried)
        return float(_OPERATORS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return float(_OPERATORS[type(node.op)](_evaluate(node.operand, retried)))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        args = [_evaluate(arg, retried) for arg in node.args]
        return float(_FUNCTIONS[node.func.id](*args))
    raise RetryDelayError(f"unsupported element in retry delay: {type(node).__name__}")


def evaluate_retry_delay(expression: str, retried: int) -> float:
    """Return the delay in milliseconds that `expression` gives for `retried` (0 = first retry).

    Only numbers, `retried`, + - * / % **, and pow sqrt abs exp floor ceil round min max are
    allowed; the expression is walked as an `ast` tree, never passed to eval. Raises RetryDelayError
    for anything else or when the arithmetic fails (overflow, domain error, division by zero).
    """
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise RetryDelayError("retry delay expression is too long")
    try:
        tree = ast.parse(expression, mode="eval")
        value = _evaluate(tree.body, retried)
    except RetryDelayError:
        raise
    except (SyntaxError, ArithmeticError, ValueError, TypeError, RecursionError) as exc:
        raise RetryDelayError(f"invalid retry delay expression: {type(exc).__name__}") from exc
    if math.isnan(value):
        raise RetryDelayError("retry delay expression is not a number")
    return value
