"""Fused certificate kernel vs eager torch reference, side by side in one run.

python bench/bench_kernels.py [--n 4096 65536] [--d 576 768 2048 3072] [--dtype bfloat16]

Per shape: tokens/s of each, fused/eager speed ratio, achieved GB/s of the fused kernel over
the bytes it must read (h, W, x, y once) and its fraction of the device's peak bandwidth, its
TFLOP/s (2 N d k: with the projection the kernel is a GEMM, compute-bound at large k, so GB/s
alone understates it), and the peak extra memory of each. On CPU only the reference runs
(Triton needs a GPU), with smaller N and fewer repeats, and the output says so.
"""

from __future__ import annotations

import argparse
import time

import torch

from blockcert.kernels.cert_reduce import fused_projection_error, fused_projection_error_reference

# MLP widths of the seed models at each d_model: SmolLM2, GPT-2, TinyLlama, Llama-3.2-3B;
# any other d uses k = 4 d
MLP_WIDTH = {576: 1536, 768: 3072, 2048: 5632, 3072: 8192}
# peak HBM bandwidth by device-name substring, first match wins (specific names first)
PEAK_GBPS = {
    "H100 PCIe": 2039.0,
    "H100 NVL": 3900.0,
    "H100": 3350.0,
    "H200": 4800.0,
    "A100-SXM4-80GB": 2039.0,
    "A100 80GB PCIe": 1935.0,
    "A100": 1555.0,
}
TAUS = [1.0, 2.0, 5.0, 10.0]


def peak_bandwidth() -> float | None:
    name = torch.cuda.get_device_name()
    return next((gbps for key, gbps in PEAK_GBPS.items() if key in name), None)


def timed(fn, repeats: int, cuda: bool) -> tuple[float, int]:
    """(seconds per call, peak extra bytes) of fn()."""
    fn()  # warm-up (and autotune)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    extra = torch.cuda.max_memory_allocated() - base if cuda else -1
    return seconds, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=None)
    parser.add_argument("--d", type=int, nargs="+", default=list(MLP_WIDTH))
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=None, help="default 10 (GPU), 3 (CPU)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, args.dtype)
    ns = args.n or ([4096, 16384, 65536] if cuda else [512, 2048])
    repeats = args.repeats or (10 if cuda else 3)
    if cuda:
        peak = peak_bandwidth()
        print(f"device: {torch.cuda.get_device_name()}, peak {peak or 'unknown'} GB/s, {dtype}")
    else:
        print(
            f"device: CPU ({torch.get_num_threads()} threads): no GPU, so Triton cannot run; "
            "timing the eager reference only"
        )
    print(
        f"{'N':>7} {'d':>5} {'k':>5} {'eager tok/s':>12} {'fused tok/s':>12} {'fused/eager':>11} "
        f"{'GB/s':>7} {'of peak':>7} {'TFLOP/s':>7} {'eager MiB':>9} {'fused MiB':>9}"
    )
    for d in args.d:
        k = MLP_WIDTH.get(d, 4 * d)
        for n in ns:
            g = torch.Generator(device=device).manual_seed(0)
            h = torch.randn(n, k, device=device, generator=g).to(dtype) * 0.05
            w = torch.randn(d, k, device=device, generator=g).to(dtype) * 0.05
            x = torch.randn(n, d, device=device, generator=g).to(dtype)
            y = torch.randn(n, d, device=device, generator=g).to(dtype)
            eager_s, eager_mem = timed(
                lambda h=h, w=w, x=x, y=y: fused_projection_error_reference(h, w, x, y, TAUS),
                repeats,
                cuda,
            )
            row = f"{n:>7} {d:>5} {k:>5} {n / eager_s:>12.3e}"
            if cuda:
                fused_s, fused_mem = timed(
                    lambda h=h, w=w, x=x, y=y: fused_projection_error(h, w, x, y, TAUS),
                    repeats,
                    cuda,
                )
                read = (h.numel() + w.numel() + x.numel() + y.numel()) * h.element_size()
                gbps = read / fused_s / 1e9
                frac = f"{gbps / peak:.1%}" if peak else "unknown"
                tflops = 2 * n * d * k / fused_s / 1e12
                row += (
                    f" {n / fused_s:>12.3e} {eager_s / fused_s:>11.2f} {gbps:>7.1f} {frac:>7}"
                    f" {tflops:>7.1f} {eager_mem / 2**20:>9.1f} {fused_mem / 2**20:>9.1f}"
                )
            else:
                row += f" {'-':>12} {'-':>11} {'-':>7} {'-':>7} {'-':>7} {'-':>9} {'-':>9}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
