"""Gated transcoders on tiny_llama (latents relu(gate) * value, TopK by magnitude): the signed
TopK, IR template and validator, parameter budget, initialisation from the teacher's neurons,
the float64 forward, sound and saturation constants, AuxK, training and the latent report."""

import pytest
import torch

from blockcert.cert.lipschitz import forward64, sound_lipschitz, transcoder_block_bound
from blockcert.cert.lipschitz.norm import fold_gain, fold_offset
from blockcert.cert.lipschitz.transcoder import GatedReads
from blockcert.lit.mlp_pairs import mlp_pairs
from blockcert.lit.transcoder import TranscoderModule, mlp_weight_keys
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_from, run_graph, topk_abs
from blockcert.surrogate.ir import Surrogate
from blockcert.surrogate.latents import latent_report
from blockcert.surrogate.transcoder import Transcoder, transcoder_params, width_for_params
from blockcert.surrogate.view import InvalidGraphError, block_view
from tests.transcoder_tools import all_latents, block_pairs, forged, mlp_fvu, worst_ratio

BLOCK, WIDTH, K = 1, 96, 8


@pytest.fixture(scope="module")
def pairs(tiny_llama):
    return block_pairs(tiny_llama, BLOCK)


@pytest.fixture(scope="module")
def full(tiny_llama):
    return extract_block(tiny_llama, BLOCK)


@pytest.fixture(scope="module")
def gated(full, pairs):
    return Transcoder(width=WIDTH, k=K, skip=True, gated=True).build(full, [pairs[1][:4]])


def test_topk_abs_keeps_the_k_largest_magnitudes_with_their_sign():
    x = torch.randn(5, 7, 30, generator=torch.Generator().manual_seed(0))
    out = topk_abs(x, 4)
    for row, kept in zip(x.reshape(-1, 30), out.reshape(-1, 30), strict=True):
        order = sorted(range(30), key=lambda i: -abs(float(row[i])))  # independent reference
        expected = torch.zeros(30)
        expected[order[:4]] = row[order[:4]]
        assert torch.equal(kept, expected)


def test_gated_template_nodes_and_parameter_count(gated, full):
    view = block_view(gated)
    assert gated.graph.family == "llama_gated_skip_transcoder"
    assert view.mlp.gated and view.mlp.skip is not None and view.mlp.k == K
    d = full.graph.d_model
    keys = mlp_weight_keys(gated.graph)
    assert sum(gated.weights[k].numel() for k in keys) == transcoder_params(d, WIDTH, True, True)
    # every node: mlp_out = W_dec topk_abs(relu(W_enc w + b) * (W_val w + c)) + b_dec + W_skip w
    x = torch.randn(2, 5, d, generator=torch.Generator().manual_seed(0))
    _, v = run_graph(gated.graph, gated.weights, x, keep=("mlp_norm", "hidden", "mlp_out"))
    w, g = v["mlp_norm"], gated.weights
    latent = torch.relu(w @ g["encoder.weight"].T + g["encoder.bias"])
    latent = latent * (w @ g["value.weight"].T + g["value.bias"])
    index = latent.abs().topk(K, dim=-1).indices
    hidden = torch.zeros_like(latent).scatter(-1, index, latent.gather(-1, index))
    assert torch.allclose(v["hidden"], hidden, atol=1e-6)
    expected = hidden @ g["decoder.weight"].T + g["decoder.bias"] + w @ g["skip.weight"].T
    assert torch.allclose(v["mlp_out"], expected, atol=1e-5)
    assert (v["hidden"] < 0).any() and ((v["hidden"] != 0).sum(-1) <= K).all()


@pytest.mark.parametrize("skip_path", [False, True])
def test_width_mlp_params_spends_the_teacher_mlps_parameters(full, pairs, skip_path):
    built = Transcoder(width="mlp_params", k=K, skip=skip_path, gated=True).build(
        full, [pairs[1][:4]]
    )
    teacher = sum(full.weights[k].numel() for k in mlp_weight_keys(full.graph))
    mine = sum(built.weights[k].numel() for k in mlp_weight_keys(built.graph))
    width = block_view(built).mlp.width
    d = full.graph.d_model
    assert mine == transcoder_params(d, width, skip_path, gated=True) <= teacher
    assert transcoder_params(d, width + 1, skip_path, gated=True) > teacher
    # SmolLM2 (d 576, SwiGLU MLP of 1536): 1342 gated latents beside the skip
    assert width_for_params(576, 3 * 576 * 1536, skip=True, gated=True) == 1342


def test_init_copies_the_teachers_most_important_neurons(full, pairs):
    _, x, _ = pairs
    width = 20
    built = Transcoder(width=width, k=K, gated=True).build(full, [x[:4]])
    _, values = run_graph(full.graph, full.weights, x[:4], keep=("hidden",))
    importance = values["hidden"].abs().sum((0, 1)) * full.weights["mlp_out.weight"].norm(dim=0)
    top = importance.topk(width).indices
    assert torch.equal(built.weights["encoder.weight"], full.weights["gate.weight"][top])
    assert torch.equal(built.weights["value.weight"], full.weights["up.weight"][top])
    # wider than the teacher: the negated neurons follow, most important first
    n = full.weights["gate.weight"].shape[0]
    wide = Transcoder(width=n + 3, k=K, gated=True).build(full, [x[:4]])
    first = wide.weights["encoder.weight"][0]
    assert torch.equal(wide.weights["encoder.weight"][n], -first)
    assert torch.equal(wide.weights["value.weight"][n], -wide.weights["value.weight"][0])


def test_init_of_a_gelu_teacher_reads_its_fc_rows_with_value_one(tiny_gpt2):
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(2))
    x, _ = tiny_gpt2.block_pair(ids, 0)
    full = extract_block(tiny_gpt2, 0)
    n = full.weights["fc.weight"].shape[0]
    built = Transcoder(width=n, k=n, gated=True).build(full, [x])
    assert built.graph.family == "gpt2_gated_transcoder"
    # every teacher neuron once: latent j = relu(fc_j w + b_j) * 1, the GELU's ReLU shadow
    _, v = run_graph(built.graph, built.weights, x, keep=("mlp_norm", "hidden"))
    fc = v["mlp_norm"] @ full.weights["fc.weight"].T + full.weights["fc.bias"]
    order = [int(r) for r in _rows_in(full.weights["fc.weight"], built.weights["encoder.weight"])]
    assert sorted(order) == list(range(n))
    assert torch.allclose(v["hidden"], torch.relu(fc[..., order]), atol=1e-5)


def _rows_in(rows, picked):
    """For each row of `picked`, the index of the equal row of `rows`."""
    return [(rows == row).all(-1).nonzero()[0, 0] for row in picked]


def test_gated_latents_explain_the_swiglu_mlp_better_than_relu_latents(full, pairs):
    """At the same parameter budget and k, teacher-initialised gated latents leave less of the
    held-out MLP variance unexplained than ReLU latents (least-squares decoders both)."""
    _, x, _ = pairs
    teacher = sum(full.weights[k].numel() for k in mlp_weight_keys(full.graph))
    fvus = {}
    for gated_latents in (False, True):
        config = Transcoder(width="mlp_params", k=32, skip=True, gated=gated_latents)
        fvus[gated_latents] = mlp_fvu(config.build(full, [x[:6]]), full, x[6:])
        assert transcoder_params(64, block_view(config.build(full, [x[:1]])).mlp.width) <= teacher
    assert fvus[True] < fvus[False]


@pytest.mark.parametrize(
    ("name", "edit", "node"),
    [
        ("value reads the latents", lambda g, w: setattr(g.node("value"), "inputs", ["gate"]),
         "value"),
        ("gate without its relu", lambda g, w: setattr(g.node("gate"), "op", "silu"), "gate"),
        ("TopK of the gate alone", lambda g, w: setattr(g.node("hidden"), "inputs", ["gate"]),
         "hidden"),
        ("plain TopK on signed latents", lambda g, w: setattr(g.node("hidden"), "op", "topk_relu"),
         "hidden"),
        ("k above the width", lambda g, w: g.node("hidden").attrs.update(k=WIDTH + 1), "hidden"),
        ("value narrower than the encoder",
         lambda g, w: w.update({"value.weight": w["value.weight"][:-1]}), "value"),
        ("the skip family without gates",
         lambda g, w: setattr(g, "family", "llama_skip_transcoder"), None),
    ],
)  # fmt: skip
def test_forged_gated_graph_is_rejected(gated, name, edit, node):
    with pytest.raises(InvalidGraphError) as err:
        block_view(forged(gated, edit))
    if node is not None:
        assert f"node {node!r}" in str(err.value), name


def test_float64_forward_is_the_interpreter_in_float64(gated, pairs):
    _, x, _ = pairs
    view = block_view(gated)
    weights64 = {k: v.double() for k, v in gated.weights.items()}
    for prompt in x[:2]:
        out, values = run_graph(gated.graph, weights64, prompt[None].double(), keep=("hidden",))
        centre = forward64(view, prompt)
        assert torch.allclose(centre["out"], out[0], atol=1e-9, rtol=1e-9)
        assert torch.allclose(centre["hidden"], values["hidden"][0], atol=1e-9)


def test_sound_constant_without_swaps_covers_perturbations(gated, pairs):
    _, x, _ = pairs
    dense = all_latents(gated)
    radius = 1e-3
    sound = sound_lipschitz(dense, [x[:2]], radius)  # dispatched to the transcoder rule
    assert sound.parts["swap_tokens"] == 0 and sound.value is not None
    assert worst_ratio(dense, x[:2], radius) <= sound.value
    # the product rule's value term counts: zero values leave the gate term alone, smaller
    weights = dict(
        dense.weights, **{"value.weight": torch.zeros_like(dense.weights["value.weight"])}
    )
    flat = transcoder_block_bound(Surrogate(dense.graph, weights), [x[:2]], radius)
    assert flat.mlp < sound.parts["mlp"]


def _mlp_jacobian_norm(surrogate, y_token):
    """||d mlp_out / d resid_attn|| at one token [d] (autograd in float64): the MLP is per token."""
    weights = {k: v.double() for k, v in surrogate.weights.items()}

    def mlp(y):
        return run_from(surrogate.graph, weights, {"resid_attn": y[None, None]}, ("mlp_out",))[
            "mlp_out"
        ][0, 0]

    jacobian = torch.autograd.functional.jacobian(mlp, y_token.double())
    return float(torch.linalg.matrix_norm(jacobian, ord=2))


def test_mlp_constant_covers_the_value_path_when_the_gates_are_flat(gated, pairs):
    """Gates nearly constant (encoder rows ~0, bias 1): the MLP's slope comes from the value
    path alone, diag(relu z) A_val; the per-token MLP constant must still bound the Jacobian."""
    _, x, _ = pairs
    weights = dict(all_latents(gated).weights)
    weights["encoder.weight"] = weights["encoder.weight"] * 1e-4
    weights["encoder.bias"] = torch.ones_like(weights["encoder.bias"])
    flat = Surrogate(all_latents(gated).graph, weights)
    bound = transcoder_block_bound(flat, [x[:1]], 1e-9)
    _, values = run_graph(flat.graph, flat.weights, x[:1], keep=("resid_attn",))
    slopes = [_mlp_jacobian_norm(flat, y) for y in values["resid_attn"][0]]
    assert bound.swap_tokens == 0 and max(slopes) <= bound.mlp
    # and the gate path alone: values constant (value rows ~0, bias 1), gates moving
    weights = dict(all_latents(gated).weights)
    weights["value.weight"] = weights["value.weight"] * 1e-4
    weights["value.bias"] = torch.ones_like(weights["value.bias"])
    moving = Surrogate(all_latents(gated).graph, weights)
    bound = transcoder_block_bound(moving, [x[:1]], 1e-9)
    slopes = [_mlp_jacobian_norm(moving, y) for y in values["resid_attn"][0]]
    assert bound.swap_tokens == 0 and max(slopes) <= bound.mlp


def test_each_latents_peak_bounds_it_on_any_normed_input(gated):
    """GatedReads.peak_i >= |relu(z_i) v_i| for every w_hat with ||w_hat|| <= sqrt(d), checked on
    the inputs that make each latent largest: w_hat along its encoder row plus its value row."""
    view = block_view(gated)
    norm2 = view.mlp_norm
    enc = fold_gain(norm2, view.mlp.encoder.matrix())
    reads = GatedReads.of(view, enc, fold_offset(norm2, view.mlp.encoder.matrix(),
                                                 view.mlp.encoder.bias), view.d_model)  # fmt: skip
    val_const = fold_offset(norm2, view.mlp.value.matrix(), view.mlp.value.bias)
    d = view.d_model
    for sign in (1.0, -1.0):
        direction = enc / enc.norm(dim=1, keepdim=True) + sign * reads.val / reads.val.norm(
            dim=1, keepdim=True
        )
        w_hat = direction / direction.norm(dim=1, keepdim=True) * d**0.5  # one input per latent
        z = (w_hat * enc).sum(-1) + fold_offset(norm2, view.mlp.encoder.matrix(),
                                                view.mlp.encoder.bias)  # fmt: skip
        v = (w_hat * reads.val).sum(-1) + val_const
        h = torch.relu(z) * v
        assert (h.abs() <= reads.peak).all()
        assert (h.abs() >= 0.25 * reads.peak).any()  # the inputs come near the peak


def test_topk_swap_of_signed_latents_is_unclaimed(gated, pairs):
    _, x, _ = pairs
    sound = sound_lipschitz(gated, [x[:2]], 1.0)
    assert sound.value is None and sound.parts["reason"].startswith("topk_swap")
    # why: two latents of equal magnitude and opposite sign trade places, the output jumps
    h = torch.tensor([2.0, -(2.0 + 1e-6), 0.1])
    moved = h + torch.tensor([2e-6, 0.0, 0.0])
    assert float((topk_abs(moved, 1) - topk_abs(h, 1)).norm()) > 2.0


def test_saturation_bounds_any_input(gated, pairs):
    _, x, _ = pairs
    bound = transcoder_block_bound(gated, [x[:2]], 0.5)
    base = run_graph(gated.graph, gated.weights, x[:2])
    generator = torch.Generator().manual_seed(3)
    for scale in (0.1, 1.0, 10.0, 100.0):
        y = x[:2] + scale * torch.randn(x[:2].shape, generator=generator)
        moved = run_graph(gated.graph, gated.weights, y)
        gap = float((moved - base).norm(dim=-1).amax())
        assert gap <= float((y - x[:2]).norm(dim=-1).amax()) + bound.saturation


def test_training_lowers_the_loss_and_auxk_reaches_dead_latents(gated, pairs):
    _, x, y = pairs
    module = TranscoderModule(gated, auxk_alpha=1.0, auxk_dead_tokens=0)
    assert module.latent_values == ("latent", "hidden")
    w, m = mlp_pairs(gated, x, y)
    module.variance.fill_(float((m - m.mean(0)).pow(2).sum(-1).mean()))
    module.auxk.since_fired.fill_(10)  # every latent silent on the next batch counts as dead
    loss = module.loss(w[:4], m[:4])  # 4 tokens fire at most 4 k latents
    dead = module.auxk.since_fired > 0
    assert dead.any() and module.auxk.stats["l0"] <= K
    loss.backward()
    for key in ("encoder__weight", "value__weight"):
        assert module.params[key].grad[dead].abs().sum() > 0
    module = TranscoderModule(gated)
    module.variance.fill_(float((m - m.mean(0)).pow(2).sum(-1).mean()))
    optimizer = torch.optim.Adam(module.params.values(), lr=1e-3)
    first = float(module.loss(w, m).detach())
    for _ in range(20):
        optimizer.zero_grad()
        module.loss(w, m).backward()
        optimizer.step()
    assert float(module.loss(w, m).detach()) < 0.8 * first
    assert block_view(module.surrogate()).mlp.gated


def test_latent_report_shows_both_signs_of_signed_latents(gated, full, pairs, tmp_path):
    from blockcert.evaluate.latents_html import render_latents_html

    ids, x, y = pairs
    report = latent_report(
        gated, full, [(x[:4], y[:4]), (x[4:], y[4:])], ids, lambda t: str(t), n_latents=6,
        n_contexts=3,
    )  # fmt: skip
    _, values = run_graph(gated.graph, gated.weights, x, keep=("hidden",))
    acts = values["hidden"].reshape(-1, WIDTH)
    assert report["signed"]
    assert report["mean_l0"] == pytest.approx(float((acts != 0).sum(-1).float().mean()))
    assert report["max_activations"] == pytest.approx(acts.abs().amax(0).tolist())
    sides = 0
    for entry in report["latents"]:
        column = acts[:, entry["latent"]]
        positive, negative = entry["top_contexts"], entry["negative_contexts"]
        assert [c["activation"] > 0 for c in positive] == [True] * len(positive)
        assert [c["activation"] < 0 for c in negative] == [True] * len(negative)
        if positive:
            assert positive[0]["activation"] == pytest.approx(float(column.max()))
        if negative:
            assert negative[0]["activation"] == pytest.approx(float(column.min()))
        assert entry["histogram"]["edges"][0] == pytest.approx(min(0.0, float(column.min())))
        assert sum(entry["histogram"]["counts"]) == int((column != 0).sum())
        sides += bool(positive) and bool(negative)
    assert sides > 0  # signed latents do write in both directions
    page = render_latents_html(report, "tiny")
    assert page.count("most negative") == sum(
        bool(e["negative_contexts"]) for e in report["latents"]
    )
    assert "background: rgba(40, 110, 200" in page  # negative activations shaded blue
