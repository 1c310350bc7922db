"""One measuring pass of one peer system on one model: the median latency of a whole batch at
each batch size, on the cores this process may use (run it under `taskset`). Prints JSON.

usage: python measure.py SYSTEM MODEL_DIR MODEL BATCHES
  SYSTEM: pytorch | onnxruntime | onnxruntime-2x1 | openvino-latency | openvino-2streams |
          openvino-throughput, each OpenVINO one with -f32 (INFERENCE_PRECISION_HINT=f32) or
          -default (what OpenVINO picks on this CPU: bf16 where AMX/AVX512-BF16 exist)
"""
import json
import os
import statistics
import sys
import threading
import time

import numpy as np

system, model_dir, model, batches = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
batches = [int(b) for b in batches.split(",")]
threads = len(os.sched_getaffinity(0))
rng = np.random.default_rng(0)


def example(b):
    if model == "bert_base":
        return rng.integers(0, 30522, size=(b, 128), dtype=np.int64)
    return rng.standard_normal((b, 3, 224, 224), dtype=np.float32)


def split(b, parts):
    """b items over `parts` workers, as even as can be (empty parts dropped)."""
    return [n for n in (b // parts + (i < b % parts) for i in range(parts)) if n > 0]


def in_parallel(fns):
    ts = [threading.Thread(target=f) for f in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def pytorch():
    import torch

    torch.set_num_threads(threads)
    m = torch.jit.load(f"{model_dir}/{model}.pt").eval()

    def run(x):
        with torch.inference_mode():
            m(torch.from_numpy(x))

    return lambda b: run


def onnxruntime(sessions):
    import onnxruntime as ort

    def session(t):
        o = ort.SessionOptions()
        o.intra_op_num_threads = t
        o.inter_op_num_threads = 1
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return ort.InferenceSession(f"{model_dir}/{model}.onnx", o, providers=["CPUExecutionProvider"])

    ss = [session(threads // sessions) for _ in range(sessions)]

    def run(x):
        parts = np.array_split(x, sessions) if len(x) >= sessions else [x]
        in_parallel([lambda s=s, p=p: s.run(None, {"input": p}) for s, p in zip(ss, parts)])

    return lambda b: run


def openvino(mode, precision):
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads}
    if precision == "f32":
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    if mode == "latency":
        cfg["PERFORMANCE_HINT"] = "LATENCY"
    elif mode == "2streams":
        cfg["NUM_STREAMS"] = 2
    else:
        cfg["PERFORMANCE_HINT"] = "THROUGHPUT"
    compiled = {}

    def compiled_for(n):
        # A static batch per sub-batch size (compiled once, outside the timing).
        if n not in compiled:
            m = core.read_model(f"{model_dir}/{model}.onnx")
            shape = [n, 128] if model == "bert_base" else [n, 3, 224, 224]
            m.reshape({m.inputs[0].any_name: shape})
            compiled[n] = core.compile_model(m, "CPU", cfg)
        return compiled[n]

    def runner(b):
        if mode == "latency":
            req = compiled_for(b).create_infer_request()
            return lambda x: req.infer({0: x})
        streams = int(compiled_for(1).get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        sizes = split(b, streams)
        reqs = [compiled_for(n).create_infer_request() for n in sizes]

        def run(x):
            off = 0
            for r, n in zip(reqs, sizes):
                r.start_async({0: x[off : off + n]})
                off += n
            for r in reqs:
                r.wait()

        return run

    return runner


if system == "pytorch":
    make = pytorch()
elif system == "onnxruntime":
    make = onnxruntime(1)
elif system == "onnxruntime-2x1":
    make = onnxruntime(2)
elif system.startswith("openvino-"):
    _, mode, precision = system.split("-")
    make = openvino(mode, precision)
else:
    sys.exit(f"unknown system {system}")

rows = {}
for b in batches:
    run, x = make(b), example(b)
    for _ in range(2):
        run(x)
    times, t_start = [], time.perf_counter()
    while len(times) < 5 or (len(times) < 41 and time.perf_counter() - t_start < 2.0):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    rows[b] = statistics.median(times)
print(json.dumps({"system": system, "model": model, "threads": threads, "rows": rows}))
