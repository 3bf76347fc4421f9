"""Transcoder surrogates on tiny_llama: IR, interpreter, validator, sound constants, certificate."""

import copy
import json
import math

import pytest
import torch

from blockcert.cert.lipschitz import empirical_lipschitz, sound_lipschitz, transcoder_block_bound
from blockcert.errors import BlockCertError
from blockcert.lit.module import SurrogateModule
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_graph, topk_relu
from blockcert.surrogate.ir import Surrogate, load_surrogate, save_surrogate
from blockcert.surrogate.latents import latent_markdown, latent_report
from blockcert.surrogate.transcoder import AuxK, Transcoder, transcoder_params
from blockcert.surrogate.view import InvalidGraphError, block_view
from tests.helpers import run_script
from tests.transcoder_tools import all_latents, block_pairs, forged, worst_ratio

BLOCK = 1


@pytest.fixture(scope="module")
def pairs(tiny_llama):
    return block_pairs(tiny_llama, BLOCK)


@pytest.fixture(scope="module")
def transcoder(tiny_llama, pairs):
    _, x, _ = pairs
    return Transcoder(width=96, k=8).build(extract_block(tiny_llama, BLOCK), [x[:4]])


def test_topk_relu_keeps_the_k_largest_positive_entries():
    x = torch.randn(5, 7, 33, generator=torch.Generator().manual_seed(0))
    for k in (1, 4, 33):
        out = topk_relu(x, k)
        kth = x.sort(-1, descending=True).values[..., k - 1 : k]
        expected = torch.where(x >= kth, x.clamp_min(0.0), torch.zeros_like(x))
        assert torch.equal(out, expected)
        assert int((out > 0).sum(-1).max()) <= k


def test_transcoder_graph_validates_with_declared_capacity(transcoder, tiny_llama):
    view = block_view(transcoder)
    assert transcoder.graph.family == "llama_transcoder"
    assert view.mlp.kind == "transcoder" and view.mlp.k == 8 and view.mlp.width == 96
    assert transcoder.graph.capacity["transcoder_width"] == 96
    assert transcoder.graph.capacity["k"] == 8
    # norms and attention are the teacher's, byte for byte
    full = extract_block(tiny_llama, BLOCK)
    for key in ("attn_norm.weight", "q.weight", "attn_out.weight", "mlp_norm.weight"):
        assert torch.equal(transcoder.weights[key], full.weights[key])
    d = full.graph.d_model
    mlp = sum(t.numel() for key, t in transcoder.weights.items() if key.startswith(("enc", "dec")))
    assert mlp == transcoder_params(d, 96)


def test_ir_round_trips_and_interpreter_equals_training_forward(transcoder, pairs, tmp_path):
    _, x, _ = pairs
    save_surrogate(transcoder, tmp_path)
    loaded = load_surrogate(tmp_path)
    assert loaded.graph.to_json() == transcoder.graph.to_json()
    assert loaded.weights.keys() == transcoder.weights.keys()
    assert all(torch.equal(loaded.weights[k], transcoder.weights[k]) for k in loaded.weights)
    module = SurrogateModule(loaded, auxk_alpha=0.03125)
    with torch.no_grad():
        assert torch.equal(module(x), run_graph(loaded.graph, loaded.weights, x))
        assert torch.equal(
            module.surrogate().weights["decoder.weight"], loaded.weights["decoder.weight"]
        )


def test_l0_is_at_most_k(transcoder, pairs):
    _, x, _ = pairs
    for k in (1, 8):
        graph = copy.deepcopy(transcoder.graph)
        graph.node("hidden").attrs["k"] = k
        graph.capacity["k"] = k
        block_view(Surrogate(graph, transcoder.weights))
        _, values = run_graph(graph, transcoder.weights, x, keep=("hidden",))
        l0 = (values["hidden"] > 0).sum(-1)
        assert int(l0.max()) <= k
    assert float((l0 > 0).float().mean()) > 0.5  # latents do fire


def test_decoder_least_squares_init_explains_the_mlp(transcoder, tiny_llama, pairs):
    _, x, _ = pairs
    full = extract_block(tiny_llama, BLOCK)
    _, ref = run_graph(full.graph, full.weights, x[:4], keep=("mlp_out",))
    _, mine = run_graph(transcoder.graph, transcoder.weights, x[:4], keep=("mlp_out",))
    target = ref["mlp_out"]
    fvu = (mine["mlp_out"] - target).pow(2).sum() / (target - target.mean((0, 1))).pow(2).sum()
    assert float(fvu) < 0.5


def test_config_rejects_bad_knobs():
    for bad in ({"k": 0}, {"k": 9, "width": 8}, {"width": 0}, {"init": "zeros"}):
        with pytest.raises(BlockCertError):
            Transcoder(**bad)


def _set_k(value):
    def edit(graph, weights):
        graph.node("hidden").attrs["k"] = value
        graph.capacity["k"] = value

    return edit


@pytest.mark.parametrize(
    ("name", "edit", "node"),
    [
        ("k above width", _set_k(97), "hidden"),
        ("zero k", _set_k(0), "hidden"),
        ("negative k", _set_k(-3), "hidden"),
        ("float k", _set_k(2.0), "hidden"),
        ("bool k", _set_k(True), "hidden"),
        ("missing k", lambda g, w: g.node("hidden").attrs.pop("k"), "hidden"),
        ("unknown attr", lambda g, w: g.node("hidden").attrs.update(slope=0.1), "hidden"),
        (
            "weight on topk",
            lambda g, w: g.node("hidden").weights.update(weight="encoder.weight"),
            "hidden",
        ),
        ("capacity k", lambda g, w: g.capacity.update(k=9), "graph"),
        ("capacity width", lambda g, w: g.capacity.update(transcoder_width=95), "graph"),
        (
            "extra node",
            lambda g, w: g.nodes.append(g.nodes[-1].__class__("add", ["out", "x"], "out2")),
            "out2",
        ),
        (
            "relu instead of topk",
            lambda g, w: setattr(g.node("hidden"), "op", "gelu_tanh"),
            "hidden",
        ),
        (
            "decoder shape",
            lambda g, w: w.update({"decoder.weight": w["decoder.weight"][:, :95]}),
            None,
        ),
        ("base family", lambda g, w: setattr(g, "family", "llama"), "mlp_out"),
    ],
)
def test_forged_transcoder_graph_is_rejected(transcoder, name, edit, node):
    with pytest.raises(InvalidGraphError) as err:
        block_view(forged(transcoder, edit))
    if node is not None:
        assert f"node {node!r}" in str(err.value), name


def test_sound_constant_without_swaps_covers_perturbations(transcoder, pairs):
    _, x, _ = pairs
    relu = all_latents(transcoder)  # k = width 96: relu latents, no top-k swap possible
    radius = 1e-3
    sound = sound_lipschitz(relu, [x[:2]], radius)  # dispatched to the transcoder rule
    assert sound.parts["swap_tokens"] == 0 and sound.value is not None
    assert sound.value >= 1.0 and worst_ratio(relu, x[:2], radius, trials=32) <= sound.value


def test_topk_swap_makes_the_block_discontinuous_and_unclaimed(transcoder, pairs):
    _, x, _ = pairs
    sound = sound_lipschitz(transcoder, [x[:2]], 1.0)
    assert sound.value is None and sound.parts["reason"].startswith("topk_swap")
    assert sound.parts["swap_tokens"] > 0
    assert math.isfinite(sound.parts["saturation"])
    # why: where two positive latents trade places the output jumps (TopK is discontinuous)
    z = torch.tensor([3.0, 3.0 + 1e-6, 0.0])
    moved = z + torch.tensor([2e-6, 0.0, 0.0])
    jump = (topk_relu(moved, 1) - topk_relu(z, 1)).norm()
    assert float(jump) > 4.0 and float((moved - z).norm()) < 1e-5


def test_saturation_bounds_any_input(transcoder, pairs):
    _, x, _ = pairs
    bound = transcoder_block_bound(transcoder, [x[:2]], 0.5)
    base = run_graph(transcoder.graph, transcoder.weights, x[:2])
    generator = torch.Generator().manual_seed(3)
    for scale in (0.1, 1.0, 10.0):
        y = x[:2] + scale * torch.randn(x[:2].shape, generator=generator)
        moved = run_graph(transcoder.graph, transcoder.weights, y)
        gap = float((moved - base).norm(dim=-1).amax())
        assert gap <= float((y - x[:2]).norm(dim=-1).amax()) + bound.saturation


def test_empirical_constant_runs_through_the_interpreter(transcoder, pairs):
    _, x, _ = pairs
    empirical = empirical_lipschitz(
        transcoder, x[:2], 1e-3, random_trials=2, ascent_steps=3, restarts=1
    )
    assert empirical.kind == "empirical" and empirical.value > 0


def test_auxk_revives_dead_latents(transcoder, pairs):
    _, x, y = pairs
    module = SurrogateModule(transcoder, auxk_alpha=1.0, auxk_dead_tokens=0)
    module.update_scale.fill_(1.0)
    module.auxk.since_fired.fill_(10)  # every latent that does not fire now counts as dead
    loss, _ = module.loss(x[:1, :2], y[:1, :2])  # 2 tokens fire at most 16 of 96 latents
    assert module.auxk.stats["l0"] <= 8
    dead = module.auxk.since_fired > 0
    assert dead.any()
    loss.backward()
    grad = module.params["encoder__weight"].grad
    assert grad[dead].abs().sum() > 0  # the aux loss reaches latents that never fire
    assert AuxK.applies(transcoder.graph)
    assert SurrogateModule(transcoder).auxk is None  # auxk_alpha = 0: plain loss


def test_latent_report_figures(transcoder, tiny_llama, pairs):
    ids, x, y = pairs
    report = latent_report(
        transcoder,
        extract_block(tiny_llama, BLOCK),
        [(x[:4], y[:4]), (x[4:], y[4:])],
        ids,
        lambda t: " ".join(map(str, t)),
        n_latents=3,
        n_contexts=2,
    )
    assert report["n_tokens"] == ids.numel() and report["mean_l0"] <= 8
    assert 0.0 <= report["dead_fraction"] <= 1.0 and report["fvu"] >= 0
    assert len(report["latents"]) == 3
    first = report["latents"][0]
    assert first["frequency"] >= report["latents"][1]["frequency"]
    top = first["top_contexts"][0]
    assert top["token"] == str(int(ids[top["prompt"], top["position"]]))
    _, values = run_graph(transcoder.graph, transcoder.weights, x, keep=("hidden",))
    assert top["activation"] == pytest.approx(
        float(values["hidden"][top["prompt"], top["position"], first["latent"]])
    )
    json.dumps(report, allow_nan=False)
    assert f"latent {first['latent']}" in latent_markdown(report, "tiny")


@pytest.mark.slow
def test_transcoder_run_certificate_verifies_with_certify_py(tmp_path):
    common = [
        "model=tiny_llama",
        "data.n_train_prompts=16",
        "data.n_heldout_prompts=8",
        "data.seq_len=32",
    ]
    proc = run_script(
        "train.py",
        *common,
        "block=1",
        "surrogate=transcoder",
        "surrogate.width=96",
        "surrogate.k=8",
        "trainer.max_epochs=2",
        "logger=csv",
        "lipschitz.sound_prompts=2",  # train.py computes no constants unless asked
        "lipschitz.empirical_prompts=2",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "tiny_llama" / "block1").iterdir()
    cert = json.loads((run / "certificate.json").read_text())
    assert cert["surrogate"]["family"] == "llama_transcoder"
    assert cert["lipschitz"]["sound"]["parts"]["saturation"] > 0
    latents = json.loads((run / "latents.json").read_text())
    assert latents["mean_l0"] <= 8 and (run / "latents.md").is_file()
    out = tmp_path / "report"
    proc = run_script(
        "certify.py",
        "model=tiny_llama",
        f"runs={tmp_path / 'tiny_llama'}",
        f"out={out}",
        f"lean.root={tmp_path}/lean",
        "lipschitz.random_trials=2",
        "lipschitz.ascent_steps=3",
        "lean.build=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "certify_report.json").is_file()
    # verification stages (hashes, IR against the transcoder template, every claim re-derived)
    log = proc.stdout + proc.stderr
    assert "stage verify: 1 certificate(s), hashes, IR and split pass" in log, log[-3000:]
    assert "stage rederive: every claim reproduced" in log, log[-3000:]
