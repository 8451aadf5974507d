"""Is there a faster 4-bit product than torch's CPU kernel? onnxruntime's ``MatMulNBits`` against
the int4 kernel the fast decoder uses, on the embedded model's projection shapes.

The decode step of ``fast int4`` is bound by torch's packed int4 kernel (``decode_parts.py``),
which is what keeps ``benchmarks/inference.py`` at about 3x instead of 4x. This times one
projection (576 -> 3072, gate/up; 1536 -> 576, down), random weights rounded to 4 bits in groups
of 32, at 1 row (a decode step) and at ``--rows`` rows (a prompt pass), one thread each:

- ``torch int4``: ``popi_sdk.backends.fast_decode._Int4`` (``_weight_int4pack_mm_for_cpu``, bf16
  inputs);
- ``onnxruntime, float32``: ``MatMulNBits`` with ``accuracy_level=0`` (float32 arithmetic);
- ``onnxruntime, int8 inputs``: ``accuracy_level=4`` (inputs quantized to 8 bits per block).

Each onnxruntime time includes one ``InferenceSession.run`` call from Python, which a whole-model
graph would not pay per product. The relative error is the largest absolute error over the
largest absolute output, against the float32 product with the unrounded weights.

Those times call one product over and over, so its weights stay in the CPU's caches. A decode
step instead goes through 30 layers' weights once each. The second table times that: ``--layers``
different weights of each shape multiplied in turn at one row, per product, for torch's kernel
and for ``MatMulNBits`` with 8-bit inputs.

onnxruntime is not a dependency of popi-sdk; install it to run this::

    pip install onnxruntime onnx
    python benchmarks/decode/ort_matmul.py
"""

from __future__ import annotations

import argparse

from decode_parts import PROJECTIONS, _per_call_ms  # the script's folder is on the path when run


def _ort_session(w, accuracy_level: int, block: int = 32):
    """A one-node graph: ``Y = A @ W.T`` with ``W`` rounded to 4 bits per block of ``block``."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n, k = w.shape
    blocks = w.reshape(n, k // block, block)
    lo, hi = blocks.min(-1), blocks.max(-1)
    scale = np.where(hi > lo, (hi - lo) / 15, 1.0).astype(np.float32)
    zero = np.round(-lo / scale).clip(0, 15).astype(np.uint8)
    q = np.round(blocks / scale[..., None] + zero[..., None]).clip(0, 15).astype(np.uint8)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    zeros = np.zeros((n, (k // block + 1) // 2), np.uint8)
    zeros[:, : (k // block + 1) // 2] |= zero[:, 0::2]
    zeros[:, : zero[:, 1::2].shape[1]] |= zero[:, 1::2] << 4
    node = helper.make_node(
        "MatMulNBits", ["A", "B", "S", "Z"], ["Y"], domain="com.microsoft",
        K=k, N=n, bits=4, block_size=block, accuracy_level=accuracy_level,
    )
    graph = helper.make_graph(
        [node], "projection",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scale.reshape(-1), "S"),
         numpy_helper.from_array(zeros.reshape(-1), "Z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200, help="Rows of the prompt-pass product.")
    ap.add_argument("--layers", type=int, default=30, help="Weights per shape taken in turn.")
    args = ap.parse_args()
    try:
        import onnxruntime
    except ImportError:
        raise SystemExit("this benchmark needs onnxruntime: pip install onnxruntime onnx") from None
    import torch

    from popi_sdk.backends.fast_decode import _Int4

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, 1 thread\n")
    print("| product | rows | torch int4 (ms) | onnxruntime, float32 (ms) | onnxruntime, int8 inputs (ms) "
          "| relative error: torch / ort float32 / ort int8 |")
    print("|---|---:|---:|---:|---:|---|")
    with torch.inference_mode():
        for n, k, name in PROJECTIONS:
            w = torch.randn(n, k) * 0.02
            q4 = _Int4(w)
            sessions = [_ort_session(w.numpy(), level) for level in (0, 4)]
            for rows in (1, args.rows):
                x = torch.randn(rows, k)
                xn = x.numpy()
                exact = x @ w.T
                outs = [q4(x).float(), *(torch.from_numpy(s.run(None, {"A": xn})[0]) for s in sessions)]
                errors = [float((o - exact).abs().max() / exact.abs().max()) for o in outs]
                reps = 1000 if rows == 1 else 30
                times = [_per_call_ms(lambda: q4(x), reps),
                         *(_per_call_ms(lambda s=s: s.run(None, {"A": xn}), reps) for s in sessions)]
                print(f"| {name} | {rows} | " + " | ".join(f"{t:.3f}" for t in times)
                      + " | " + " / ".join(f"{e:.3f}" for e in errors) + " |")

        print(f"\n| product, 1 row | torch int4: one weight (ms) | {args.layers} weights in turn (ms) "
              f"| onnxruntime, int8 inputs: one weight (ms) | {args.layers} weights in turn (ms) |")
        print("|---|---:|---:|---:|---:|")
        for n, k, name in PROJECTIONS:
            ws = [torch.randn(n, k) * 0.02 for _ in range(args.layers)]
            q4s = [_Int4(w) for w in ws]
            sessions = [_ort_session(w.numpy(), 4) for w in ws]
            x = torch.randn(1, k)
            xn = x.numpy()

            def torch_turn():
                for q4 in q4s:
                    q4(x)

            def ort_turn():
                for s in sessions:
                    s.run(None, {"A": xn})

            times = [_per_call_ms(lambda: q4s[0](x), 1000), _per_call_ms(torch_turn, 100) / args.layers,
                     _per_call_ms(lambda: sessions[0].run(None, {"A": xn}), 1000),
                     _per_call_ms(ort_turn, 100) / args.layers]
            print(f"| {name} | " + " | ".join(f"{t:.3f}" for t in times) + " |")


if __name__ == "__main__":
    main()
