"""Python's `eval` for the argument lists of a `submit_paths(...)` answer, without running anything.

The course grader evaluates the two lists of a GraphDev answer with `eval`, so any Python
expression counts there: `weights=[725] + []`, `paths=[[0, 2]] + [[0, 2, 4]]`, `[int(725)]`,
`[list(range(0, 5, 2))]`, `[725*1**1]`, `[[*range(3)]]`. `evaluate` computes the same value from
the expression's syntax tree, with Python's own operators, for a whitelist:

- literals (numbers, strings, True/False/None), list and tuple displays, `*x` inside them;
- `+ - * / // % **` and unary `-`/`+` (`%` on numbers only, since on a string it is formatting);
- calls of the pure builtins `int float abs len sum min max list tuple range sorted` with
  positional arguments (`sorted` also takes `reverse=`).

Anything else (names, attributes, subscripts, comprehensions, other calls) raises
`NotEvaluated`; so does an expression whose result would pass the bounds below. Both stand for
"eval raised", on which the grader moves on to its next pattern, which is what it does when eval
runs out of memory (`[0] * 10**12`). A result that is merely slow to compute there (`10**10**10`)
has no score to match, and here it fails fast.

Bounds, checked BEFORE an operation materialises its result: the source has at most `MAX_SOURCE`
characters (parsing takes some 450 bytes a character), every value has a size (1 for a
number, the length of a string, 1 plus the sizes of the elements of a list or tuple, counted again
for each reference, so `[[0] * 1000] * 1000` has size 1,001,001), no value may exceed `MAX_SIZE`,
and no integer `MAX_INT_BITS` bits; the sizes of all values built add up to at most `MAX_WORK`,
which bounds the time. Python's parser refuses nesting deeper than about 200 brackets, and a
deeper tree than the recursion limit allows is refused too.
"""

from __future__ import annotations

import ast
import operator

MAX_SOURCE = 50_000      # a 2048-token answer is some 10,000 characters
MAX_SIZE = 100_000       # far above any honest answer: 3 paths of at most 20 nodes
MAX_INT_BITS = 4_096     # path costs are below 2**15; a big number is only ever wrong
MAX_WORK = 1_000_000     # total size of all intermediate values


class NotEvaluated(ValueError):
    """The expression is outside the whitelist or its value would exceed the bounds."""


def evaluate(source: str):
    """The value Python's `eval(source)` would give, for whitelisted expressions within the bounds.

    Raises `NotEvaluated` outside them, and whatever Python raises for a bad operation
    (`TypeError` for `[1] - [1]`, `ZeroDivisionError`, `SyntaxError`, ...), as eval would.
    """
    if len(source) > MAX_SOURCE:
        raise NotEvaluated(f"{len(source)} characters exceed {MAX_SOURCE}")
    try:
        tree = ast.parse(source.strip(), mode="eval")
        return _Evaluator().value(tree.body)[0]
    except (RecursionError, MemoryError) as e:
        raise NotEvaluated(type(e).__name__) from None


def _is_int(value) -> bool:
    return isinstance(value, int)  # bool included: True * [1] is [1]


def _is_number(value) -> bool:
    return isinstance(value, (int, float, complex))


def _is_sequence(value) -> bool:
    return isinstance(value, (str, bytes, list, tuple))


def _container_size(items_size: int, value) -> int:
    """The size of `value` given the total size of its items: a list or tuple counts itself too."""
    return items_size if isinstance(value, (str, bytes)) else 1 + items_size


class _Evaluator:
    """One evaluation: `value(node)` returns (value, size) and charges the work budget."""

    def __init__(self):
        self.work = 0

    @staticmethod
    def check(size: int) -> int:
        if size > MAX_SIZE:
            raise NotEvaluated(f"a value of size {size} exceeds {MAX_SIZE}")
        return size

    def charge(self, size: int) -> int:
        """Checks `size` and adds it to the work done; called before the value is built."""
        self.work += self.check(size)
        if self.work > MAX_WORK:
            raise NotEvaluated(f"more than {MAX_WORK} work")
        return size

    def value(self, node: ast.AST) -> tuple[object, int]:
        if isinstance(node, ast.Constant):
            size = len(node.value) if isinstance(node.value, (str, bytes)) else 1
            return node.value, self.charge(size)
        if isinstance(node, (ast.List, ast.Tuple)):
            items, size = self.elements(node.elts)
            return (items if isinstance(node, ast.List) else tuple(items)), size
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand, _ = self.value(node.operand)
            if not _is_number(operand):
                raise TypeError(f"bad operand type for unary {type(node.op).__name__}")
            return (-operand if isinstance(node.op, ast.USub) else +operand), self.charge(1)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return self.binary(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
            return self.call(node)
        raise NotEvaluated(f"not whitelisted: {type(node).__name__}")

    def elements(self, nodes: list[ast.AST]) -> tuple[list, int]:
        """The items of a list or tuple display, `*iterable` expanded; and the display's size."""
        items, size = [], 1
        for node in nodes:
            if isinstance(node, ast.Starred):
                iterable, inner = self.value(node.value)
                if not isinstance(iterable, (str, bytes, list, tuple, range)):
                    raise TypeError(f"{type(iterable).__name__} object is not iterable")
                items += iterable
                size += inner - (0 if isinstance(iterable, (str, bytes)) else 1)
            else:
                item, inner = self.value(node)
                items.append(item)
                size += inner
            self.check(size)
        return items, self.charge(size)

    def binary(self, node: ast.BinOp) -> tuple[object, int]:
        # A chain `1 + 1 + ... + 1` nests to the left as deep as it is long: fold it in a loop,
        # as Python's compiler does, instead of recursing once per operator.
        chain = []
        while isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            chain.append(node)
            node = node.left
        result = self.value(node)
        for link in reversed(chain):
            result = self.apply(type(link.op), result, self.value(link.right))
        return result

    def apply(self, op: type, left_sized: tuple[object, int], right_sized: tuple[object, int]) -> tuple[object, int]:
        """`left op right` for two evaluated operands, given with their sizes."""
        (left, left_size), (right, right_size) = left_sized, right_sized
        if _is_number(left) and _is_number(right):
            if op is ast.Pow and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1 \
                    and right * (abs(left).bit_length() - 1) >= MAX_INT_BITS:  # a lower bound of its bits
                raise NotEvaluated(f"{left} ** {right} is too large")
            if op is ast.Mult and _is_int(left) and _is_int(right) \
                    and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                raise NotEvaluated("a product too large")
            return self.number(_BINARY[op](left, right))
        if op is ast.Mult and (_is_int(left) or _is_int(right)):
            sequence, sequence_size, times = (left, left_size, right) if _is_int(right) else (right, right_size, left)
            if not _is_sequence(sequence):
                raise TypeError(f"can't multiply sequence by non-int of type {type(sequence).__name__}")
            items_size = sequence_size - _container_size(0, sequence)
            size = self.charge(_container_size(max(times, 0) * items_size, sequence))
            return sequence * times, size
        if op is ast.Add and _is_sequence(left) and type(left) is type(right):
            size = self.charge(left_size + right_size - _container_size(0, left))
            return left + right, size
        raise TypeError(f"unsupported operand types for {op.__name__}: {type(left).__name__}, {type(right).__name__}")

    def number(self, result) -> tuple[object, int]:
        """A computed number, refused if it is an integer of more than MAX_INT_BITS bits."""
        if _is_int(result) and result.bit_length() > MAX_INT_BITS:
            raise NotEvaluated(f"an integer of {result.bit_length()} bits exceeds {MAX_INT_BITS}")
        return result, self.charge(1)

    def call(self, node: ast.Call) -> tuple[object, int]:
        name = node.func.id
        if any(isinstance(a, ast.Starred) for a in node.args) or \
                any(k.arg != "reverse" or name != "sorted" for k in node.keywords):
            raise NotEvaluated(f"unsupported arguments to {name}")
        evaluated = [self.value(a) for a in node.args]
        args, sizes = [a for a, _ in evaluated], [s for _, s in evaluated]
        keywords = {k.arg: self.value(k.value)[0] for k in node.keywords}
        if name == "range":
            result = range(*args)
            return result, self.charge(1 + len(result))  # counted as listed: a path may be a range
        if name in ("list", "tuple", "sorted") and len(args) == 1:
            iterable = args[0]
            if not isinstance(iterable, (str, bytes, list, tuple, range)):
                raise TypeError(f"{type(iterable).__name__} object is not iterable")
            # Its items are one-character strings, or the items the iterable held.
            size = self.charge(1 + len(iterable) if isinstance(iterable, (str, bytes)) else sizes[0])
            return _CALLS[name](iterable, **keywords), size
        if name == "sum" and len(args) == 2 and _is_sequence(args[1]):
            # Concatenating k sequences copies the running total k times.
            self.charge(min(MAX_WORK + 1, len(args[0]) * sum(sizes)))
            return _CALLS[name](*args), self.check(sum(sizes))
        result = _CALLS[name](*args)
        if name in ("min", "max"):
            return result, sum(sizes)  # one of its arguments' items, built already
        return self.number(result)


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CALLS = {"int": int, "float": float, "abs": abs, "len": len, "sum": sum, "min": min, "max": max,
          "list": list, "tuple": tuple, "range": range, "sorted": sorted}
