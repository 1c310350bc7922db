"""Writes the small ONNX models (and one OpenVINO IR) the engine tests serve into DIR, with
inputs and the outputs onnx's own ReferenceEvaluator computes for them (independent of the
engines).

usage: python make_onnx.py DIR
"""
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

out = sys.argv[1]
rng = np.random.default_rng(0)


def f32(a):
    return np.asarray(a, dtype=np.float32)


def save(model, name):
    model.ir_version = 8  # ONNX Runtime 1.32 reads it; newer onnx defaults may be ahead
    onnx.checker.check_model(model)
    onnx.save(model, f"{out}/{name}.onnx")
    return ReferenceEvaluator(model)


def init(name, a):
    return numpy_helper.from_array(f32(a), name)


# cnn: x [N, 3, 8, 8] -> Conv 3->4 (3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm 4->5
conv_w, conv_b = f32(rng.standard_normal((4, 3, 3, 3)) * 0.3), f32(rng.standard_normal(4) * 0.1)
fc_w, fc_b = f32(rng.standard_normal((5, 4))), f32(rng.standard_normal(5))
cnn = helper.make_model(
    helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "G", "C"], ["y"], transB=1),
        ],
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [init("W", conv_w), init("B", conv_b), init("G", fc_w), init("C", fc_b)],
    ),
    opset_imports=[helper.make_opsetid("", 17)],
)
ref = save(cnn, "cnn")
for n in (1, 3, 8):
    x = f32(rng.standard_normal((n, 3, 8, 8)))
    np.save(f"{out}/cnn_x{n}.npy", x)
    np.save(f"{out}/cnn_y{n}.npy", ref.run(None, {"x": x})[0])

# two inputs: a [N, 16], b [N, 8] -> tanh(a @ A + b @ B), and a second output a @ A
a_w, b_w = f32(rng.standard_normal((16, 4)) * 0.3), f32(rng.standard_normal((8, 4)) * 0.3)
two = helper.make_model(
    helper.make_graph(
        [
            helper.make_node("MatMul", ["a", "A"], ["pa"]),
            helper.make_node("MatMul", ["b", "Bw"], ["pb"]),
            helper.make_node("Add", ["pa", "pb"], ["s"]),
            helper.make_node("Tanh", ["s"], ["y"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 8]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("pa", TensorProto.FLOAT, ["N", 4]),
        ],
        [init("A", a_w), init("Bw", b_w)],
    ),
    opset_imports=[helper.make_opsetid("", 17)],
)
ref = save(two, "two")
a, b = f32(rng.standard_normal((3, 16))), f32(rng.standard_normal((3, 8)))
np.savez(f"{out}/two_in.npz", a=a, b=b)
y, pa = ref.run(None, {"a": a, "b": b})
np.savez(f"{out}/two_out.npz", y=y, pa=pa)


def matmuls(name, weights):
    """x [N, rows of the first weight] through MatMuls by each weight in turn."""
    nodes, prev = [], "x"
    for k, _ in enumerate(weights):
        nodes.append(helper.make_node("MatMul", [prev, f"W{k}"], [f"h{k}"]))
        prev = f"h{k}"
    nodes[-1].output[0] = "y"
    model = helper.make_model(
        helper.make_graph(
            nodes,
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weights[0].shape[0]])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weights[-1].shape[1]])],
            [init(f"W{k}", w) for k, w in enumerate(weights)],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    save(model, name)


# bf16-sensitive: y = x·a − x·(1.001 a). bf16 cannot tell a from 1.001 a, so its outputs are noise.
a0 = f32(rng.standard_normal(64))
matmuls("sensitive", [f32(np.stack([a0, a0 * f32(1.001)], axis=1)), f32([[1.0], [-1.0]])])
# Benign on random inputs, sensitive on real ones: y = 1000.25·x0 − 1000·x1 cancels when x0 = x1.
matmuls("trap", [f32([[1000.25], [-1000.0]])])

with open(f"{out}/not_onnx.onnx", "w") as f:
    f.write("this is not a protobuf\n")

# The same CNN as an OpenVINO IR (.xml + .bin), for the OpenVINO engine.
import openvino as ov  # noqa: E402

ov.save_model(ov.convert_model(f"{out}/cnn.onnx"), f"{out}/cnn.xml", compress_to_fp16=False)


# hang: y = x, after a Loop of max|x| iterations. Warm-up inputs (randn) loop a few times; a job
# whose values are ~1e15 loops for days: a forward pass that hangs (the watchdog test).
body = helper.make_graph(
    [
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Identity", ["v_in"], ["v_out"]),
    ],
    "body",
    [
        helper.make_tensor_value_info("i", TensorProto.INT64, []),
        helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", 4]),
    ],
    [
        helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
        helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 4]),
    ],
)
hang = helper.make_model(
    helper.make_graph(
        [
            helper.make_node("Abs", ["x"], ["ax"]),
            helper.make_node("ReduceMax", ["ax"], ["mx"], keepdims=0),
            helper.make_node("Cast", ["mx"], ["M"], to=TensorProto.INT64),
            helper.make_node("Loop", ["M", "C", "x"], ["y"], body=body),
        ],
        "hang",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.array(True), "C")],
    ),
    opset_imports=[helper.make_opsetid("", 17)],
)
save(hang, "hang")

# versions of one model (the lifecycle tests): x [N, 8] -> tanh(x @ (k * W)), W = 0.5 sin(0..31)
# as [8, 4], for k = 1..4; the tests compute the same reference themselves.
lin_w = f32(0.5 * np.sin(np.arange(32, dtype=np.float64)).reshape(8, 4))
for k in (1, 2, 3, 4):
    lin = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "W"], ["m"]),
                helper.make_node("Tanh", ["m"], ["y"]),
            ],
            f"lin{k}",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
            [init("W", lin_w * k)],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    save(lin, f"lin{k}")
