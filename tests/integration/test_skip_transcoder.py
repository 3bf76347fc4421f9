"""Skip transcoders on tiny_llama: IR template, parameter count, sound constants with the skip
path, the float64 forward, and the MLP token stream and module that train transcoders."""

import copy
import math

import pytest
import torch

from blockcert.cert.fp_allowance import fp_error
from blockcert.cert.lipschitz import forward64, sound_lipschitz, transcoder_block_bound
from blockcert.cert.spectral import spectral_norm_estimate
from blockcert.errors import BlockCertError
from blockcert.lit.mlp_pairs import MlpPairStream, mlp_pairs
from blockcert.lit.transcoder import TranscoderModule, mlp_weight_keys
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.interpret import run_from, run_graph
from blockcert.surrogate.ir import Node, Surrogate
from blockcert.surrogate.transcoder import Transcoder, transcoder_params, width_for_params
from blockcert.surrogate.view import InvalidGraphError, block_view
from tests.transcoder_tools import all_latents, block_pairs, forged, mlp_fvu, worst_ratio

BLOCK = 1


@pytest.fixture(scope="module")
def pairs(tiny_llama):
    return block_pairs(tiny_llama, BLOCK)


@pytest.fixture(scope="module")
def full(tiny_llama):
    return extract_block(tiny_llama, BLOCK)


@pytest.fixture(scope="module")
def skip(full, pairs):
    return Transcoder(width=96, k=8, skip=True).build(full, [pairs[1][:4]])


def test_skip_transcoder_template_and_parameter_count(skip, full):
    view = block_view(skip)
    assert skip.graph.family == "llama_skip_transcoder"
    assert view.mlp.kind == "transcoder" and view.mlp.skip is not None
    d = full.graph.d_model
    assert view.mlp.skip.weight.shape == (d, d) and view.mlp.down.node == "decoder"
    assert view.last_projection is None  # the fused reduction would miss the skip path
    mlp_keys = mlp_weight_keys(skip.graph)
    assert mlp_keys == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias",
                        "skip.weight"}  # fmt: skip
    assert sum(skip.weights[k].numel() for k in mlp_keys) == transcoder_params(d, 96, skip=True)
    assert skip.num_params == view.num_params
    # every node of the MLP: mlp_out = W_dec topk(W_enc w + b_enc) + b_dec + W_skip w
    x = torch.randn(2, 5, d, generator=torch.Generator().manual_seed(0))
    _, v = run_graph(skip.graph, skip.weights, x, keep=("mlp_norm", "hidden", "mlp_out"))
    w, h = v["mlp_norm"], v["hidden"]
    expected = h @ skip.weights["decoder.weight"].T + skip.weights["decoder.bias"]
    expected = expected + w @ skip.weights["skip.weight"].T
    assert torch.allclose(v["mlp_out"], expected, atol=1e-5)


@pytest.mark.parametrize("skip_path", [False, True])
def test_width_for_params_is_the_largest_width_within_budget(skip_path):
    for d, budget in ((64, 30_000), (576, 3 * 576 * 1536), (576, 1_771_584)):
        width = width_for_params(d, budget, skip_path)
        assert transcoder_params(d, width, skip_path) <= budget
        assert transcoder_params(d, width + 1, skip_path) > budget
    # the skip's d^2 parameters come out of the dictionary: 1248 latents at the pruned budget
    assert width_for_params(576, 1_771_584, skip=True) == 1248


@pytest.mark.parametrize("skip_path", [False, True])
def test_width_mlp_params_spends_the_teacher_mlps_parameters(full, pairs, skip_path):
    """surrogate.width=mlp_params: the widest dictionary whose MLP part (skip included) has at
    most the teacher MLP's parameters, counted from the teacher's MLP weights themselves."""
    built = Transcoder(width="mlp_params", k=8, skip=skip_path).build(full, [pairs[1][:4]])
    teacher = sum(full.weights[k].numel() for k in mlp_weight_keys(full.graph))
    mine = sum(built.weights[k].numel() for k in mlp_weight_keys(built.graph))
    width = block_view(built).mlp.width
    d = full.graph.d_model
    assert mine == transcoder_params(d, width, skip_path) <= teacher
    assert transcoder_params(d, width + 1, skip_path) > teacher
    with pytest.raises(BlockCertError, match="surrogate.width"):
        Transcoder(width="mlp", k=8)


def test_least_squares_with_the_skip_explains_more(full, pairs):
    _, x, _ = pairs
    plain = Transcoder(width=96, k=8).build(full, [x[:4]])
    skip = Transcoder(width=96, k=8, skip=True).build(full, [x[:4]])
    # same encoder, more regressors: the in-sample fit cannot be worse (ridge aside)
    assert torch.equal(plain.weights["encoder.weight"], skip.weights["encoder.weight"])
    assert mlp_fvu(skip, full, x[:4]) < mlp_fvu(plain, full, x[:4])


def _rewire(output, inputs):
    def edit(graph, weights):
        graph.node(output).inputs = inputs

    return edit


@pytest.mark.parametrize(
    ("name", "edit", "node"),
    [
        ("skip reads the latents", _rewire("skip", ["hidden"]), "skip"),
        ("skip reads the raw input", _rewire("skip", ["resid_attn"]), "skip"),
        ("sum drops the skip", _rewire("mlp_out", ["decoder", "decoder"]), "mlp_out"),
        ("out adds the decoder only", _rewire("out", ["resid_attn", "decoder"]), "out"),
        (
            "skip not square",
            lambda g, w: w.update({"skip.weight": w["skip.weight"][:, :-1]}),
            "skip",
        ),
        ("skip as a nonlinearity", lambda g, w: setattr(g.node("skip"), "op", "silu"), "skip"),
        ("plain family with a skip", lambda g, w: setattr(g, "family", "llama_transcoder"), None),
        (
            "a second skip",
            lambda g, w: g.nodes.insert(
                11, Node("linear", ["mlp_norm"], "skip2", {"weight": "skip.weight"})
            ),
            None,
        ),
    ],
)
def test_forged_skip_graph_is_rejected(skip, name, edit, node):
    with pytest.raises(InvalidGraphError) as err:
        block_view(forged(skip, edit))
    if node is not None:
        assert f"node {node!r}" in str(err.value), name


def test_plain_transcoder_cannot_claim_the_skip_family(full, pairs):
    plain = Transcoder(width=96, k=8).build(full, [pairs[1][:4]])
    with pytest.raises(InvalidGraphError):
        block_view(forged(plain, lambda g, w: setattr(g, "family", "llama_skip_transcoder")))


def test_sound_constant_counts_the_skip_path(skip, pairs):
    _, x, _ = pairs
    relu = all_latents(skip)
    sound = sound_lipschitz(relu, [x[:2]], 1e-3)
    assert sound.parts["swap_tokens"] == 0 and sound.value is not None
    assert worst_ratio(relu, x[:2], 1e-3) <= sound.value
    # the skip's bound is at least its folded spectral norm (power iteration, from below)
    folded = skip.weights["skip.weight"].double() * skip.weights["mlp_norm.weight"].double()
    assert sound.parts["skip_norm"] >= spectral_norm_estimate(folded)
    # the same block without its skip path: the MLP constant drops by at least lambda ||A_skip||
    no_skip = copy.deepcopy(relu.weights)
    no_skip["skip.weight"] = torch.zeros_like(no_skip["skip.weight"])
    without = transcoder_block_bound(Surrogate(relu.graph, no_skip), [x[:2]], 1e-3)
    assert without.skip_norm == 0.0 and without.mlp < sound.parts["mlp"]


def test_saturation_with_skip_bounds_any_input(skip, pairs):
    _, x, _ = pairs
    bound = transcoder_block_bound(skip, [x[:2]], 0.5)
    assert bound.skip_norm > 0
    base = run_graph(skip.graph, skip.weights, x[:2])
    generator = torch.Generator().manual_seed(3)
    for scale in (0.1, 1.0, 10.0, 100.0):
        y = x[:2] + scale * torch.randn(x[:2].shape, generator=generator)
        moved = run_graph(skip.graph, skip.weights, y)
        gap = float((moved - base).norm(dim=-1).amax())
        assert gap <= float((y - x[:2]).norm(dim=-1).amax()) + bound.saturation


@pytest.mark.parametrize("with_skip", [False, True])
def test_float64_forward_is_the_interpreter_in_float64(full, pairs, with_skip):
    _, x, _ = pairs
    surrogate = Transcoder(width=96, k=8, skip=with_skip).build(full, [x[:4]])
    view = block_view(surrogate)
    weights64 = {k: v.double() for k, v in surrogate.weights.items()}
    for prompt in x[:2]:
        out, values = run_graph(surrogate.graph, weights64, prompt[None].double(), keep=("hidden",))
        centre = forward64(view, prompt)
        assert torch.allclose(centre["out"], out[0], atol=1e-9, rtol=1e-9)
        assert torch.allclose(centre["hidden"], values["hidden"][0], atol=1e-9)
    # the measured fp32 allowance is rounding, not a different function
    assert fp_error(surrogate, [x[:2]]) < 1e-4 * float(x.norm(dim=-1).max())


def test_run_from_computes_the_mlp_from_its_input(skip, pairs):
    _, x, _ = pairs
    _, values = run_graph(skip.graph, skip.weights, x, keep=("mlp_norm", "mlp_out"))
    tail = run_from(skip.graph, skip.weights, {"mlp_norm": values["mlp_norm"]}, ("mlp_out",))
    assert torch.equal(tail["mlp_out"], values["mlp_out"])
    with pytest.raises(KeyError):
        run_from(skip.graph, skip.weights, {"mlp_norm": values["mlp_norm"]}, ("out",))


def test_mlp_pair_stream_holds_every_token_once(skip, full, pairs):
    _, x, y = pairs
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    stream = MlpPairStream(batches, skip, x.shape[0] * x.shape[1], tokens_per_batch=40,
                           buffer_tokens=70, seed=0)  # fmt: skip
    out = list(stream)
    assert len(out) == len(stream) == math.ceil(x.shape[0] * x.shape[1] / 40)
    assert all(len(w) == 40 for w, _ in out[:-1])
    w = torch.cat([w for w, _ in out])
    m = torch.cat([m for _, m in out])
    # the targets are the teacher MLP's outputs on the same normed inputs, in some order
    _, ref = run_graph(full.graph, full.weights, x, keep=("mlp_norm", "mlp_out"))
    ref_w, ref_m = ref["mlp_norm"].reshape(-1, x.shape[-1]), ref["mlp_out"].reshape(-1, x.shape[-1])
    order = torch.argsort(w[:, 0])
    ref_order = torch.argsort(ref_w[:, 0])
    assert torch.equal(w[order], ref_w[ref_order])
    assert torch.allclose(m[order], ref_m[ref_order], atol=1e-4)
    # a second epoch reshuffles
    again = torch.cat([w for w, _ in stream])
    assert not torch.equal(again, w) and torch.equal(again.sort(0).values, w.sort(0).values)
    assert torch.equal(mlp_pairs(skip, x[:3], y[:3])[0], ref_w[: 3 * x.shape[1]])


def test_transcoder_module_trains_the_mlp_only(skip, pairs):
    _, x, y = pairs
    module = TranscoderModule(skip, auxk_alpha=0.03125, k_start=32,
                              k_anneal_fraction=0.5)  # fmt: skip
    assert set(module.params) == {k.replace(".", "__") for k in mlp_weight_keys(skip.graph)}
    w, m = mlp_pairs(skip, x, y)
    module.variance.fill_(float((m - m.mean(0)).pow(2).sum(-1).mean()))
    optimizer = torch.optim.Adam(module.params.values(), lr=1e-3)
    first = float(module.loss(w, m).detach())
    for _ in range(20):
        optimizer.zero_grad()
        module.loss(w, m).backward()
        optimizer.step()
    assert float(module.loss(w, m).detach()) < 0.8 * first
    trained = module.surrogate()
    block_view(trained)
    for key in ("q.weight", "attn_out.weight", "mlp_norm.weight"):
        assert torch.equal(trained.weights[key], skip.weights[key])
    assert not torch.equal(trained.weights["skip.weight"], skip.weights["skip.weight"])


def test_k_schedule_is_geometric(skip):
    module = TranscoderModule(skip, k_start=32, k_anneal_fraction=0.5)
    ks = [module.k_schedule(step, total=100) for step in (0, 25, 49, 50, 99)]
    assert ks == [32, 16, 8, 8, 8]


def test_latents_page_escapes_corpus_text_and_needs_nothing_outside(skip, full, pairs, tmp_path):
    from blockcert.evaluate.latents_html import render_latents_html, write_latents_html
    from blockcert.surrogate.latents import latent_report

    ids, x, y = pairs
    hostile = '<script>alert("x")</script>'

    def decode(tokens):  # corpus text may hold markup: every token reads as a script tag here
        return hostile + "".join(str(t) for t in tokens) + "\n"

    report = latent_report(
        skip,
        full,
        [(x[:4], y[:4]), (x[4:], y[4:])],
        ids,
        decode,
        n_latents=5,
        n_contexts=3,
        logit_effect=lambda u: u @ torch.eye(u.shape[-1], 11),  # a stand-in unembedding
        n_frequent=2,
    )
    report["tokens_seen"] = 1234
    page = render_latents_html(report, f"tiny {hostile}")
    assert "<script" not in page and "&lt;script&gt;" in page
    for external in ("http:", "https:", "src=", "<link", "@import", "url("):
        assert external not in page
    assert page.count('class="latent"') == len(report["latents"]) == 5
    for entry in report["latents"]:
        assert f'id="latent-{entry["latent"]}"' in page
        assert len(entry["histogram"]["counts"]) == len(entry["histogram"]["edges"]) - 1
        assert sum(entry["histogram"]["counts"]) == round(entry["frequency"] * ids.numel())
        top = entry["top_contexts"][0]
        assert top["tokens"][top["focus"]]["activation"] == pytest.approx(top["activation"])
        assert len(entry["logits"]["promoted"]) == 8
    # the two most frequent first, then a sample of the others, most frequent first
    frequencies = [e["frequency"] for e in report["latents"]]
    assert frequencies == sorted(frequencies, reverse=True)
    assert frequencies[0] == max(report["frequencies"])
    assert "training tokens seen" in page and "1,234" in page
    assert "approximation" in page  # the logit effects are labelled as such
    path = write_latents_html(tmp_path, report, "tiny")
    assert path.read_text(encoding="utf-8") == render_latents_html(report, "tiny")


def test_direct_logit_effect_is_the_unembedding_through_the_final_norm(tiny_adapter):
    from blockcert.lit.latents import direct_logit_effect

    d = tiny_adapter.d_model
    u = torch.randn(3, d, generator=torch.Generator().manual_seed(0))
    effect = direct_logit_effect(tiny_adapter)(u)
    model = tiny_adapter.teacher.model
    if tiny_adapter.teacher.family == "llama":
        norm, unembed = model.model.norm, model.lm_head.weight
        normed = norm.weight * u / u.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).sqrt()
    else:  # LayerNorm: centred and scaled by gamma; beta (and any head bias) cancel
        norm, unembed = model.transformer.ln_f, model.lm_head.weight
        c = u - u.mean(-1, keepdim=True)
        normed = norm.weight * c / c.pow(2).mean(-1, keepdim=True).add(norm.eps).sqrt()
    assert torch.allclose(effect, normed @ unembed.T, atol=1e-4)
