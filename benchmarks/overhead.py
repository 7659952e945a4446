"""Per-operation overhead: one Tensor operation, forward and backward, mocrograd vs PyTorch.

Small networks are dominated by what each operation costs besides its arithmetic:
building the graph node, dispatching to a kernel, allocating the result, running the
backward rule. This measures exactly that, on a 1x1 and a 64x32 operand:

    y = op(a, b); y.backward(g)        # a, b leaves that require a gradient

for op in (element-wise multiply, matrix product), alternating the two libraries in
blocks so that machine drift hits both alike, and reports the median microseconds per
forward + backward. PyTorch is optional (skipped with a note when missing) and runs on
one thread, its fastest setting for operands this small.

    python benchmarks/overhead.py [--blocks 7] [--calls 2000] [--json PATH]
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np

import mocrograd as mg
from mocrograd import Tensor
from mocrograd.train import HelpFormatter, output_file, positive_int

SHAPES = {"1x1": ((1, 1), (1, 1)), "64x32": ((64, 32), (32, 32))}   # (a, b) of the product


def ops(a, b, square_b):
    """The measured operations: (name, forward) with operands of the right shapes."""
    return {"mul": lambda: a * square_b, "matmul": lambda: a @ b}


def mocrograd_case(shape_a, shape_b, name):
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal(shape_a, dtype=np.float32), requires_grad=True)
    b = Tensor(rng.standard_normal(shape_b, dtype=np.float32), requires_grad=True)
    same = Tensor(rng.standard_normal(shape_a, dtype=np.float32), requires_grad=True)
    forward = ops(a, b, same)[name]
    g = Tensor(np.ones(forward().shape, dtype=np.float32))

    def call():
        a.grad = b.grad = same.grad = None
        forward().backward(g)
    return call


def torch_case(torch, shape_a, shape_b, name):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(*shape_a, generator=gen, requires_grad=True)
    b = torch.randn(*shape_b, generator=gen, requires_grad=True)
    same = torch.randn(*shape_a, generator=gen, requires_grad=True)
    forward = ops(a, b, same)[name]
    g = torch.ones_like(forward())

    def call():
        a.grad = b.grad = same.grad = None
        forward().backward(g)
    return call


def per_call_us(call, calls):
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--blocks", type=positive_int, default=7, help="alternating blocks per contender (median taken)")
    parser.add_argument("--calls", type=positive_int, default=2000, help="forward + backward calls per block")
    parser.add_argument("--json", type=output_file, help="also write the results here")
    args = parser.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        torch = None
        print("PyTorch is not installed: its column is skipped", file=sys.stderr)

    results = []
    print(f"| operation | operands | mocrograd µs | PyTorch µs | ratio |\n|---|---|---:|---:|---:|")
    for name in ("mul", "matmul"):
        for label, (shape_a, shape_b) in SHAPES.items():
            contenders = {"mocrograd": mocrograd_case(shape_a, shape_b, name)}
            if torch is not None:
                contenders["torch"] = torch_case(torch, shape_a, shape_b, name)
            times = {who: [] for who in contenders}
            for who, call in contenders.items():   # warm-up
                per_call_us(call, args.calls // 10 + 1)
            for _ in range(args.blocks):
                for who, call in contenders.items():
                    times[who].append(per_call_us(call, args.calls))
            ours = statistics.median(times["mocrograd"])
            theirs = statistics.median(times["torch"]) if torch is not None else None
            results.append({"op": name, "operands": label, "mocrograd_us": ours, "torch_us": theirs,
                            "blocks": times})
            print(f"| {name} | {label} | {ours:.1f} | "
                  + (f"{theirs:.1f} | {ours / theirs:.2f} |" if theirs else "skipped | - |"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mocrograd": mg.__version__, "backend": mg.get_backend(),
                       "torch": torch.__version__ if torch is not None else None, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
