"""Compression on tiny_llama: the calibration walk (teacher / stitched inputs, resume), the run
state, one fit cutting heads, neurons and rank, and the recipe as one command: allocation, walk,
end-to-end pass and certificates that certify.py composes and blockcert.stitched.load loads."""

import pytest
import torch

from blockcert.compress.cut import Pruning, cut_neurons
from blockcert.compress.pipeline import RunState
from blockcert.compress.recipe import Recipe
from blockcert.compress.walk import WalkStore, walk
from blockcert.errors import BlockCertError
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.view import block_view
from tests.helpers import certify_in_process, run_script, train_in_process


def _fit_full_width(cal):
    """No cut: only the LS refit of the down projection on the walk's statistics."""
    full = cal.full
    return cut_neurons(
        full, cal.mlp(full), block_view(full).mlp.width, Pruning("obs", "ls", ridge=1e-9)
    )


def test_stitched_inputs_fit_the_stitched_stream_better(tiny_llama):
    """Block 1 refitted on h~_1 (after block 0's surrogate) errs less on h~_1 than the same
    refit on teacher inputs: the least-squares solution of the stitched problem."""
    ids = torch.randint(0, 256, (8, 20), generator=torch.Generator().manual_seed(7))

    def fit(cal):
        if cal.block == 0:  # a deliberately poor block 0: drift for block 1 to undo
            return cut_neurons(cal.full, cal.mlp(cal.full), 16, Pruning("importance", "none"))
        return _fit_full_width(cal)

    teacher = walk(tiny_llama, ids, [0, 1], fit, inputs="teacher", batch_size=4)
    stitched = walk(tiny_llama, ids, [0, 1], fit, inputs="stitched", batch_size=4)
    assert torch.equal(teacher[0].weights["mlp_out.weight"], stitched[0].weights["mlp_out.weight"])
    g0 = teacher[0]
    with torch.no_grad():
        h = tiny_llama.embed(ids)
        drifted = run_graph(g0.graph, g0.weights, h)
        target = tiny_llama.block(1, tiny_llama.block(0, h))
    error = {
        name: float((run_graph(s[1].graph, s[1].weights, drifted) - target).pow(2).sum())
        for name, s in (("teacher", teacher), ("stitched", stitched))
    }
    assert error["stitched"] < 0.9 * error["teacher"]


def test_walk_resumes_at_the_first_missing_block(tiny_llama, tmp_path):
    ids = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(3))
    fitted = []

    def fit(cal):
        fitted.append(cal.block)
        return cut_neurons(cal.full, cal.mlp(cal.full), 64, Pruning())

    store = WalkStore(tmp_path / "walk")
    first = walk(tiny_llama, ids, range(4), fit, batch_size=2, store=store)
    for name in ("surrogate.json", "surrogate.safetensors"):
        (store.path(2) / name).unlink()
    (store.path(3) / "surrogate.json").unlink()  # a block killed between its two files
    fitted.clear()
    again = walk(tiny_llama, ids, range(4), fit, batch_size=2, store=store)
    assert fitted == [2, 3]
    for k in range(4):
        for key, tensor in first[k].weights.items():
            assert torch.equal(tensor, again[k].weights[key]), (k, key)


def test_run_state_refuses_another_recipe(tmp_path):
    state = RunState(tmp_path)
    identity = {"compress": {"budget": {"mlp_fraction": 0.75}}, "blocks": [0, 1]}
    state.claim(identity)
    state.claim(identity)  # the same run resumes
    with pytest.raises(BlockCertError, match="compress"):
        RunState(tmp_path).claim({**identity, "compress": {"budget": {"mlp_fraction": 0.5}}})


# debug=tiny (tiny_llama, 16 + 8 prompts of 32 tokens) with the recipe's passes shortened
TINY_RECIPE = [
    "blocks=all",
    "compress=mlp75",
    "compress.allocation.prompts=8",
    "compress.allocation.kl_prompts=4",
    "compress.e2e.prompts=8",
]


def _generates(run):
    from blockcert.stitched import load

    model, _ = load(run, "tiny_llama")
    ids = torch.tensor([[256, 5, 9, 11]])
    out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 9) and torch.equal(out[:, :4], ids)


def test_recipe_certifies_every_block_and_composes(tmp_path):
    """In-process: 75 % of the MLP neurons over all blocks, heads kept; every block has a
    certificate, the stitched figures are reported and certify composes all four."""
    result = train_in_process(tmp_path, *TINY_RECIPE)
    run = tmp_path / "run"
    assert sorted(r.block for r in result.runs) == [0, 1, 2, 3]
    summary = result.compressed
    assert summary["heldout"]["n_prompts"] == 8
    widths = [r.certificate["surrogate"]["capacity"]["mlp_width"] for r in result.runs]
    full = 4 * 128  # tiny_llama: 4 blocks of 128 MLP neurons
    assert abs(sum(widths) - 0.75 * full) <= 4 and min(widths) < 128
    report = certify_in_process(tmp_path, run, "model=tiny_llama").report
    assert report["certified_blocks"] == [0, 1, 2, 3]
    assert report["bound"]["claimed"] >= report["stitched"]["observed_final_max"]
    _generates(run)


@pytest.mark.slow
def test_recipe_command_resumes_certifies_and_generates(tmp_path):
    """`python train.py debug=tiny blocks=all compress=mlp75` from a clean directory;
    certify.py composes it (exit 0); a run with a block's walk, certificate and summary deleted
    resumes to the same surrogates; the run is a point of the whole-model Pareto front; the
    stitched model loads and generates."""
    paths = ["debug=tiny", f"runs_root={tmp_path}", f"cache.root={tmp_path}/cache"]
    proc = run_script("train.py", *TINY_RECIPE, *paths)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compressed:" in proc.stdout and "heldout (8 prompts" in proc.stdout
    (run,) = (tmp_path / "tiny_llama" / "blocks").iterdir()
    certified = {k: (run / f"block{k}" / "surrogate.safetensors").read_bytes() for k in range(4)}
    for path in (
        run / "compress" / "walk" / "block3" / "surrogate.json",
        run / "compress" / "e2e.json",
        run / "compress" / "summary.json",
        run / "block3" / "certificate.json",
    ):
        path.unlink()
    again = run_script("train.py", *TINY_RECIPE, *paths, f"hydra.run.dir={run}")
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "walk block 2 (3/4, resumed)" in log and "walk block 3 (4/4)" in log
    for k in range(4):
        assert (run / f"block{k}" / "surrogate.safetensors").read_bytes() == certified[k]

    check = run_script(
        "certify.py", "debug=tiny", f"runs={run}", f"out={tmp_path}/cert", "lean.build=false"
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert "certified blocks          4 of 4" in check.stdout

    from blockcert.pareto import main as pareto

    assert pareto([str(tmp_path), "--no-wandb"]) == 0
    rows = (tmp_path / "pareto_model.md").read_text().splitlines()[2:]
    assert len(rows) == 1 and str(run) in rows[0] and "| yes |" in rows[0]
    _generates(run)


def test_block_fit_cuts_heads_neurons_and_rank(tiny_llama):
    from blockcert.compress.allocation import Widths
    from blockcert.compress.pipeline import block_fit

    recipe = Recipe(budget={"mlp_fraction": 0.5, "head_fraction": 0.5, "rank_fraction": 0.25})
    widths = Widths({k: 2 for k in range(4)}, {k: 64 - 8 * k for k in range(4)})
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(4))
    fit = block_fit(recipe, widths, recipe.budget.rank(64))
    surrogates = walk(tiny_llama, ids, range(4), fit, batch_size=2)
    for k, surrogate in surrogates.items():
        view = block_view(surrogate)
        assert view.attention.n_heads == 2 and view.mlp.width == 64 - 8 * k
        assert surrogate.graph.capacity["rank"] == 16
        assert all(p.rank == 16 for p in view.projections().values() if p.low_rank)
        assert surrogate.num_params < surrogate.graph.capacity["teacher_params"]
