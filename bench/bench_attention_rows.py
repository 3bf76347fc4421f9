"""How far the sound attention row bounds sit above the exact row norm, at the tube centre.

    python bench/bench_attention_rows.py --block 12 --tokens 6

For the tokens with the largest per-source bound on one held-out prompt (r -> 0), prints:
the per-source bound and the aligned one (blockcert.cert.lipschitz.attention.attention_rows), the
row sum sum_s ||J_ts|| of the exact float64 Jacobian (autograd), the weighted Cauchy-Schwarz
bound sqrt(sum_s w_s) sqrt(lambda_max(sum_s J_ts J_ts^T / w_s)) with w_s = ||J_ts|| (an upper
bound for any positive weights), and a lower estimate of the inf->2 row norm
max_(||dx_s|| <= 1) ||sum_s J_ts dx_s|| by alternating maximisation. A diagnostic, not a bound
the certificates use.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blockcert.capture.corpus import ShakespeareCorpus  # noqa: E402
from blockcert.capture.prompts import build_prompts  # noqa: E402
from blockcert.cert.lipschitz import fold_block, forward64  # noqa: E402
from blockcert.cert.lipschitz.attention import attention_rows  # noqa: E402
from blockcert.evaluate.trajectory import teacher_trajectory  # noqa: E402
from blockcert.models.adapters import adapter_for  # noqa: E402
from blockcert.models.load import load_teacher_by_name as load_teacher  # noqa: E402
from blockcert.surrogate.extract import extract_block  # noqa: E402
from blockcert.surrogate.view import block_view  # noqa: E402


def row_lower(jac: torch.Tensor, starts: int = 5, steps: int = 100) -> float:
    """max ||sum_s J_s dx_s|| over ||dx_s|| <= 1, from below: dx_s = J_s^T u / ||J_s^T u||,
    u = the normalised output, repeated from a few random u."""
    best = 0.0
    for seed in range(starts):
        u = torch.randn(
            jac.shape[1], dtype=jac.dtype, generator=torch.Generator().manual_seed(seed)
        )
        for _ in range(steps):
            back = torch.einsum("sij,i->sj", jac, u / u.norm())
            u = torch.einsum(
                "sij,sj->i", jac, back / back.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            )
        best = max(best, float(u.norm()))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--block", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(2)
    teacher = load_teacher(args.model)
    adapter = adapter_for(teacher)
    split = build_prompts(ShakespeareCorpus(), teacher.tokenizer, 128, 64, 1, seed=0)
    x = teacher_trajectory(adapter, split.heldout, batch_size=8)[args.block][0].double()
    view = block_view(extract_block(adapter, args.block))
    f = fold_block(view)
    cen = forward64(view, x)  # both passes share its cached centre terms, as in certify.py
    r = 1e-9 * float(x.norm(dim=-1).median())
    per_source, _, _ = attention_rows(f, cen, r)
    top = torch.argsort(per_source, descending=True)[: args.tokens]
    aligned, _, _ = attention_rows(f, cen, r, top)
    print("token | per-source | aligned | exact row sum | Cauchy-Schwarz | lower (inf->2)")
    for bound, t in zip(aligned.tolist(), top.tolist(), strict=True):

        def row(prefix: torch.Tensor) -> torch.Tensor:
            # causal: row t reads positions <= t only; y - x is the attention output
            return forward64(view, prefix)["y"][-1] - prefix[-1]

        jac = torch.autograd.functional.jacobian(row, x[: t + 1].clone()).permute(1, 0, 2)
        norms = torch.linalg.matrix_norm(jac, ord=2).clamp_min(1e-30)
        gram = torch.einsum("sij,skj->ik", jac / norms[:, None, None], jac)
        cs = math.sqrt(float(norms.sum()) * float(torch.linalg.eigvalsh(gram)[-1]))
        print(
            f"{t} | {float(per_source[t]):.2f} | {bound:.2f} | {float(norms.sum()):.2f} | "
            f"{cs:.2f} | {row_lower(jac):.2f}"
        )


if __name__ == "__main__":
    main()
