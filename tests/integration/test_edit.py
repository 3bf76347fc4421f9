"""Certified local edits (edit.py): closed form, budget, metrics, and the script end to end."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from blockcert.edit.budget import Drift, heldout_drift, largest_scale, smallest_scale
from blockcert.edit.facts import encode_query, facts_from
from blockcert.edit.metrics import Probe
from blockcert.edit.pipeline import EditedBlock
from blockcert.edit.solve import memory_update
from blockcert.errors import BlockCertError, VerificationError
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph
from tests.helpers import certify_in_process, edit_in_process, run_entry

PROMPT = "The Eiffel Tower is located in the city of"
EDIT = [  # on top of debug=tiny
    "block=1",
    f"edit.prompt={PROMPT}",
    "edit.target=R",
    "lipschitz.empirical_prompts=2",
    "edit.lr=0.05",  # a random model's near-uniform head needs a large residual delta
]


def _spd(m: int, seed: int) -> torch.Tensor:
    a = torch.randn(m, 3 * m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / (3 * m)


def test_rome_update_is_the_papers_rank_one_formula():
    g = torch.Generator().manual_seed(1)
    c, k = _spd(12, 0), torch.randn(12, 1, generator=g, dtype=torch.float64)
    r = torch.randn(5, 1, generator=g, dtype=torch.float64)
    c_inv_k = torch.linalg.inv(c) @ k
    rome = r @ c_inv_k.T / float(k.T @ c_inv_k)  # Meng et al. 2022, eq. 2
    assert torch.allclose(memory_update(c, k, r), rome, atol=1e-10)


def test_batch_update_writes_every_key_with_least_covariance_norm():
    g = torch.Generator().manual_seed(2)
    c, keys = _spd(16, 3), torch.randn(16, 3, generator=g, dtype=torch.float64)
    residuals = torch.randn(6, 3, generator=g, dtype=torch.float64)
    update = memory_update(c, keys, residuals)
    assert torch.allclose(update @ keys, residuals, atol=1e-9)

    def energy(w):  # tr(W C W^T) = E ||W k||^2 over the preserved keys
        return float(torch.trace(w @ c @ w.T))

    # any other solution differs by P with P K = 0 and costs more
    basis = torch.linalg.svd(keys.T).Vh[3:]  # rows span the null space of K^T
    for seed in range(5):
        coeff = torch.randn(
            6, 13, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        other = update + coeff @ basis
        assert torch.allclose(other @ keys, residuals, atol=1e-9)
        assert energy(other) > energy(update)


def test_memit_lambda_matches_the_papers_normal_equations():
    g = torch.Generator().manual_seed(4)
    c, keys = _spd(10, 5), torch.randn(10, 4, generator=g, dtype=torch.float64)
    residuals = torch.randn(7, 4, generator=g, dtype=torch.float64)
    lam = 3.0
    memit = residuals @ keys.T @ torch.linalg.inv(lam * c + keys @ keys.T)  # MEMIT eq. 14
    assert torch.allclose(memory_update(c, keys, residuals, lam), memit, atol=1e-9)


def test_scale_search():
    drift = Drift(eps_0=0.01, eps_1=2.0, median_norm=10.0)
    assert largest_scale(None, drift) == 1.0
    assert largest_scale(0.5, drift, margin=0.0) == pytest.approx(0.245)
    assert largest_scale(0.005, drift) == 0.0
    assert largest_scale(100.0, drift) == 1.0
    assert smallest_scale(lambda s: s >= 0.3, tol=1e-4) == pytest.approx(0.3, abs=1e-4)
    assert smallest_scale(lambda s: False) is None


def test_drift_bound_covers_the_edited_block(tiny_llama, token_ids):
    block = extract_block(tiny_llama, 1)
    x_in, x_out = tiny_llama.block_pair(token_ids, 1)
    d, m = x_out.shape[-1], block.weights["mlp_out.weight"].shape[1]
    g = torch.Generator().manual_seed(7)
    update = torch.randn(d, 1, generator=g, dtype=torch.float64) @ torch.randn(
        1, m, generator=g, dtype=torch.float64
    )
    drift = heldout_drift(block, update, [(x_in, x_out)])
    edited = EditedBlock(block, update, "mlp_out.weight")
    for scale in (0.0, 0.3, 1.0):
        out = run_graph(edited.at(scale).graph, edited.at(scale).weights, x_in)
        eps = float((out - x_out).norm(dim=-1).max())
        assert eps <= drift.bound(scale) * (1 + 1e-5)
        if scale:  # and the bound is tight: the update is what moves the output
            assert eps >= scale * drift.eps_1 - drift.eps_0 - 1e-6


def test_right_padding_scores_each_query_as_if_alone(tiny_llama):
    tok = tiny_llama.teacher.tokenizer
    queries = [
        encode_query(tok, PROMPT, " Rome", "Eiffel Tower"),
        encode_query(tok, "Paris is in", "X", None),
    ]
    block = lambda h: tiny_llama.block(1, h)  # noqa: E731
    together = Probe(tiny_llama, 1, queries).scores(block)
    alone = [Probe(tiny_llama, 1, [q]).scores(block)[0] for q in queries]
    for a, b in zip(together, alone, strict=True):
        assert a.rank == b.rank and a.top_token == b.top_token
        assert a.prob == pytest.approx(b.prob, rel=1e-5)
    assert queries[0].key_pos < queries[0].answer_pos  # key at "Tower", answer at "of"


def test_facts_need_a_subject_inside_the_prompt():
    from omegaconf import OmegaConf

    with pytest.raises(BlockCertError, match="does not occur"):
        facts_from(OmegaConf.create({"prompt": PROMPT, "target": "R", "subject": "Louvre"}))
    with pytest.raises(BlockCertError, match="nothing to edit"):
        facts_from(OmegaConf.create({"prompt": None, "target": None, "facts": []}))


def _edit_cli(tmp, *extra):
    return run_entry(
        "edit",
        "debug=tiny",
        *EDIT,
        f"runs_root={tmp}",
        f"cache.root={tmp}/cache",
        "wandb.mode=disabled",
        *extra,
    )


def _certify(tmp, runs):
    result = certify_in_process(tmp, runs)
    return result.report


@pytest.fixture(scope="module")
def edit_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edit")
    run_dir = edit_in_process(tmp, *EDIT)
    return tmp, run_dir, json.loads((run_dir / "edit_report.json").read_text())


def test_edit_makes_the_target_top1(edit_run):
    _, run_dir, report = edit_run
    (row,) = report["efficacy"]
    assert row["before"]["rank"] > 1 and not row["before"]["top1"]
    assert row["after"]["rank"] == 1 and row["after"]["top1"]
    assert row["after"]["prob"] > row["before"]["prob"]
    assert report["success"] and report["update"]["rank"] == 1
    eps = report["certificate"]["eps_max"]
    drift = report["budget"]["drift"]
    # the triangle-inequality bound, up to fp32 rounding of two summation orders
    assert 0 < eps <= (drift["eps_1"] + drift["eps_0"]) * (1 + 1e-6)
    for name in ("certificate.json", "edit_report.md", "edit_tradeoff.png", "surrogate.json"):
        assert (run_dir / name).is_file()


def test_edit_certificate_verifies_and_bounds_the_drift(edit_run):
    tmp, run_dir, report = edit_run
    certified = _certify(tmp, run_dir)
    assert certified["certified_blocks"] == [1]
    stitched = certified["stitched"]
    bound = certified["bound"]
    assert bound["claimed"] >= bound["observed"] > 0  # on the prompts the bound covers
    (row,) = [b for b in certified["blocks"] if b["block"] == 1]
    assert row["eps"] >= report["certificate"]["eps_max"]
    # certify.py's stitched model is the edited model: same locality figures
    assert stitched["kl_mean"] == pytest.approx(report["locality"]["kl_mean"], rel=1e-3)
    assert stitched["top1_agreement"] == pytest.approx(report["locality"]["top1_agreement"])


def test_tampered_edited_block_is_rejected(edit_run, tmp_path):
    _, run_dir, _ = edit_run
    copy = tmp_path / "edit"
    copy.mkdir()
    for path in run_dir.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    weights = load_file(str(copy / "surrogate.safetensors"))
    weights["mlp_out.weight"][0, 0] *= -1.0  # flip one weight of the edit, re-hash nothing
    save_file(weights, str(copy / "surrogate.safetensors"))
    with pytest.raises(VerificationError) as err:
        _certify(tmp_path, copy)
    assert "\n" not in str(err.value) and "surrogate.safetensors" in str(err.value)


def test_edit_over_budget_exits_2_with_one_line(edit_run, tmp_path):
    _, _, report = edit_run
    needed = report["budget"]["min_success_eps"]
    proc = _edit_cli(tmp_path, f"edit.max_eps={needed / 4:.6g}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the edit needs eps"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("certificate.json"))


@pytest.mark.slow
def test_edit_within_budget_is_scaled_down(edit_run, tmp_path):
    _, _, report = edit_run
    drift = report["budget"]["drift"]
    full = drift["eps_1"] + drift["eps_0"]
    budget = 0.5 * (report["budget"]["min_success_eps"] + full)  # between needed and full
    run_dir = edit_in_process(tmp_path, *EDIT, f"edit.max_eps={budget:.6g}")
    scaled = json.loads((run_dir / "edit_report.json").read_text())
    assert scaled["success"] and scaled["budget"]["scale"] < 1.0
    assert scaled["certificate"]["eps_max"] <= budget


@pytest.mark.slow
def test_memit_batch_certifies_end_to_end(tmp_path):
    facts = (
        '[{prompt: "Paris is the capital of", target: "Q"}, '
        '{prompt: "The cat sat on the", target: "Z"}]'
    )  # plus the edit.prompt fact: three facts in block 1
    proc = _edit_cli(
        tmp_path,
        f"edit.facts={facts}",
        "edit.certify=true",
        "wandb.mode=offline",
        "edit.certify_args=['debug=tiny','lean.build=false']",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list(tmp_path.rglob("edit_report.json"))
    report = json.loads(path.read_text())
    assert report["method"] == "memit" and report["update"]["rank"] == 3
    assert all(r["after"]["top1"] for r in report["efficacy"])
    assert report["certify"]["global_bound"] >= report["certify"]["observed_drift"]
    assert list(path.parent.glob("wandb/offline-run-*"))
