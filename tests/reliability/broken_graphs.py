"""Real exported graphs edited (onnx's helper API) to give NaN for inputs of our choosing.

They load, match their manifest and signatures, and give the real model's outputs everywhere
else: only the finiteness checks can catch them. Rows are [B, width]; a condition is a [B, 1]
bool, and a row where it holds gets NaN in every output of the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

# Adds its nodes to the graph, reading the graph's input; returns the [B, 1] condition's name.
Condition = Callable[[onnx.GraphProto, str], str]
NAN_ROWS = "broken_nan_rows"


def nan_where(condition: Condition) -> Callable[[onnx.ModelProto], None]:
    """Every output of the graph becomes Where(condition, NaN, what it was)."""

    def change(model: onnx.ModelProto) -> None:
        graph = model.graph
        cond = condition(graph, graph.input[0].name)
        nan = _constant(graph, "nan", np.array(np.nan, np.float32))
        for output in [o.name for o in graph.output]:
            graph.node.append(
                helper.make_node("Where", [cond, nan, _before(graph, output)], [output])
            )

    return change


def scaled(output: str, factor: float) -> Callable[[onnx.ModelProto], None]:
    """`output` multiplied by `factor` (what the graph computes from it is left as it was)."""

    def change(model: onnx.ModelProto) -> None:
        graph = model.graph
        by = _constant(graph, "factor", np.array(factor, np.float32))
        graph.node.append(helper.make_node("Mul", [_before(graph, output), by], [output]))

    return change


def _before(graph: onnx.GraphProto, output: str) -> str:
    """Rename `output` wherever the graph makes or reads it; the new name, for the node that
    will make `output` from it."""
    raw = f"{output}_before_edit"
    for node in graph.node:
        node.input[:] = [raw if name == output else name for name in node.input]
        node.output[:] = [raw if name == output else name for name in node.output]
    return raw


def any_abs_over(limit: float) -> Condition:
    """Some |value| of the row is over `limit`."""
    return _condition(
        {"axes": np.array([1], np.int64), "limit": np.array(limit, np.float32)},
        lambda feed, c: [
            helper.make_node("Abs", [feed], ["abs_feed"]),
            helper.make_node("ReduceMax", ["abs_feed", c["axes"]], ["max_abs"], keepdims=1),
            helper.make_node("Greater", ["max_abs", c["limit"]], [NAN_ROWS]),
        ],
    )


def first_equals(value: float) -> Condition:
    """The row's first value is exactly `value`."""
    return _condition(
        {
            "zero": np.array([0], np.int64),
            "one": np.array([1], np.int64),
            "target": np.array(value, np.float32),
        },
        lambda feed, c: [
            helper.make_node("Slice", [feed, c["zero"], c["one"], c["one"]], ["first"]),
            helper.make_node("Equal", ["first", c["target"]], [NAN_ROWS]),
        ],
    )


def sum_equals(value: float) -> Condition:
    """The row sums to exactly `value` (for binary images: that many pixels of ink)."""
    return _condition(
        {"axes": np.array([1], np.int64), "target": np.array(value, np.float32)},
        lambda feed, c: [
            helper.make_node("ReduceSum", [feed, c["axes"]], ["row_sum"], keepdims=1),
            helper.make_node("Equal", ["row_sum", c["target"]], [NAN_ROWS]),
        ],
    )


def _condition(
    constants: dict[str, np.ndarray],
    nodes: Callable[[str, dict[str, str]], list[onnx.NodeProto]],
) -> Condition:
    """A condition made of `nodes(feed, constant names)`, which must end in NAN_ROWS."""

    def condition(graph: onnx.GraphProto, feed: str) -> str:
        names = {key: _constant(graph, key, value) for key, value in constants.items()}
        graph.node.extend(nodes(feed, names))
        return NAN_ROWS

    return condition


def _constant(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(value, f"broken_{name}"))
    return f"broken_{name}"
