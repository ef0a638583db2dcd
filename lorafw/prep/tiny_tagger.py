"""A tiny tagger shaped like the published WD v3 ones, built in code for tests, benchmarks and demos:
`model.onnx` (NHWC float input → channel means → linear → sigmoid, one score per tag) and its
`selected_tags.csv`. Needs the `onnx` package (a test dependency), not any download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

# (name, category, weights on the mean of input channels 0, 1, 2 — B, G, R — each scaled to 0–1, bias)
DEFAULT_TAGS: tuple[tuple[str, int, tuple[float, float, float], float], ...] = (
    ("general", 9, (0, 0, 4), -1),
    ("sensitive", 9, (0, 0, -4), 1),
    ("red_theme", 0, (-4, -4, 8), -2),
    ("blue_theme", 0, (8, -4, -4), -2),
    ("white_background", 0, (3, 3, 3), -5),
    ("^_^", 0, (0, 0, 5), -2),
    ("long_hair", 0, (0, 0, 0), -1.3),
    ("kafka_(honkai:_star_rail)", 4, (-2, -2, 6), -1),
)


def build_tiny_tagger(folder: str | Path, tags: Sequence[tuple[str, int, Sequence[float], float]] = DEFAULT_TAGS,
                      size: int = 448, batch: int | str = "batch") -> Path:
    """Write `model.onnx` + `selected_tags.csv` into `folder`; scores = sigmoid(w · channel_means/255 + b)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([t[2] for t in tags], np.float32).T  # (3, tags)
    b = np.array([t[3] for t in tags], np.float32)
    nodes = [
        helper.make_node("Transpose", ["input_1:0"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("GlobalAveragePool", ["nchw"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Mul", ["flat", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "w"], ["lin"]),
        helper.make_node("Add", ["lin", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    inits = [numpy_helper.from_array(np.array([1 / 255], np.float32), "scale"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(
        nodes, "wd-tiny-v3", [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [batch, len(tags)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by older onnxruntime builds too
    onnx.checker.check_model(model)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{100 + i},{n},{c},{1000 - i}" for i, (n, c, _, _) in enumerate(tags)]
    (out / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return out
