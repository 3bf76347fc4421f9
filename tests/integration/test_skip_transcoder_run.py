"""A skip transcoder run on tiny_llama end to end: train.py trains it on the MLP token stream,
certifies it, writes latents.html; certify.py verifies and composes the run. The page is parsed
and checked against the trained dictionary's own activations, recomputed from the saved IR on
teacher pairs of the held-out prompts (not the run's pair cache)."""

import json
import re
from html.parser import HTMLParser

import pytest
import torch
from safetensors.torch import load_file

from blockcert.cert.certificate import TOKENS_FILE
from blockcert.models.adapters import adapter_for
from blockcert.models.load import load_teacher_by_name
from blockcert.resources import compose_config
from blockcert.surrogate.interpret import run_graph
from blockcert.surrogate.ir import load_surrogate
from blockcert.surrogate.transcoder import width_for_params
from tests.helpers import certify_in_process, train_in_process

BLOCK, WIDTH, K, EPOCHS = 1, 64, 8, 3
TRAIN_TOKENS = 16 * 32  # conf/debug/tiny.yaml: 16 training prompts of 32 tokens
SHADE = re.compile(r"background: rgba\(214, 96, 0, ([0-9.]+)\)")


class LatentPage(HTMLParser):
    """Per latent section (<details class="latent" id="latent-N">): its context rows, each a
    list of token spans (text, focused?, shading alpha or None, title)."""

    def __init__(self):
        super().__init__()
        self.latents: dict[int, list[list[dict]]] = {}
        self.index_links: list[int] = []
        self.current: int | None = None
        self.span: dict | None = None
        self.external = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag in ("script", "link", "img", "iframe") or "src" in a:
            self.external = True
        if tag == "details" and "latent" in classes:
            self.current = int(a["id"].removeprefix("latent-"))
            self.latents[self.current] = []
        elif tag == "a" and (a.get("href") or "").startswith("#latent-"):
            self.index_links.append(int(a["href"].removeprefix("#latent-")))
        elif tag == "tr" and self.current is not None:
            self.latents[self.current].append([])
        elif tag == "span" and "tok" in classes and self.current is not None:
            shade = SHADE.search(a.get("style") or "")
            self.span = {
                "text": "",
                "focus": "focus" in classes,
                "alpha": float(shade.group(1)) if shade else None,
                "title": a.get("title", ""),
            }

    def handle_data(self, data):
        if self.span is not None:
            self.span["text"] += data

    def handle_endtag(self, tag):
        if tag == "span" and self.span is not None:
            rows = self.latents[self.current]
            rows[-1].append(self.span)
            self.span = None
        elif tag == "details" and self.current is not None:
            self.latents[self.current] = [row for row in self.latents[self.current] if row]
            self.current = None


def _recomputed_latents(run) -> tuple[torch.Tensor, torch.Tensor, object]:
    """(held-out ids [n, s], the trained dictionary's latents [n, s, width], tokenizer)."""
    adapter = adapter_for(load_teacher_by_name("tiny_llama"))
    ids = load_file(str(run / TOKENS_FILE))["input_ids"]
    x, _ = adapter.block_pair(ids, BLOCK)
    surrogate = load_surrogate(run)
    _, values = run_graph(surrogate.graph, surrogate.weights, x.float(), keep=("hidden",))
    return ids, values["hidden"], adapter.teacher.tokenizer


@pytest.mark.slow
def test_skip_transcoder_trains_certifies_and_renders_its_latents(tmp_path):
    (result,) = train_in_process(
        tmp_path,
        f"block={BLOCK}",
        "surrogate=transcoder",
        "surrogate.skip=true",
        f"surrogate.width={WIDTH}",
        f"surrogate.k={K}",
        "module.tokens_per_batch=128",
        "module.k_start=32",
        "module.k_anneal_fraction=0.5",
        f"trainer.max_epochs={EPOCHS}",
        "lipschitz.sound_prompts=2",
    ).runs
    run = result.run_dir
    cert = json.loads((run / "certificate.json").read_text())
    assert cert["surrogate"]["family"] == "llama_skip_transcoder"
    assert cert["surrogate"]["params"] <= cert["surrogate"]["teacher_params"]
    assert cert["lipschitz"]["sound"]["parts"]["skip_norm"] > 0
    training = json.loads((run / "training.json").read_text())
    assert training["module"] == "TranscoderModule"
    assert training["tokens_seen"] == EPOCHS * TRAIN_TOKENS
    report = json.loads((run / "latents.json").read_text())
    assert report["skip"] and report["tokens_seen"] == EPOCHS * TRAIN_TOKENS

    # the page against the trained dictionary's own activations on the held-out prompts
    ids, hidden, tokenizer = _recomputed_latents(run)
    fired = (hidden > 0).reshape(-1, WIDTH)
    frequency = fired.float().mean(0)
    assert int(fired.sum(-1).max()) <= K
    assert report["mean_l0"] == pytest.approx(float(fired.sum(-1).float().mean()), abs=1e-6)
    live = {i for i in range(WIDTH) if frequency[i] > 0}
    assert report["dead_fraction"] == pytest.approx(1 - len(live) / WIDTH)
    page = LatentPage()
    page.feed((run / "latents.html").read_text(encoding="utf-8"))
    assert not page.external
    shown = list(page.latents)
    assert shown == [entry["latent"] for entry in report["latents"]]
    # 64 latents asked for, 16 most frequent first: every live latent is shown, no dead one
    assert set(shown) == live and set(page.index_links) == live
    assert shown[0] == int(frequency.argmax())
    for latent, rows in page.latents.items():
        column = hidden[..., latent]
        top = column.flatten().topk(len(rows)).values
        assert rows, f"latent {latent} has no context"
        for rank, row in enumerate(rows):
            (focus,) = [span for span in row if span["focus"]]
            value = float(focus["title"].removeprefix("activation "))
            assert value == pytest.approx(float(top[rank]), rel=1e-3)  # ranked by activation
            # the focused token is the held-out token where the latent takes that value
            where = (column - top[rank]).abs().flatten().argmin()
            prompt, position = divmod(int(where), ids.shape[1])
            text = tokenizer.decode([int(ids[prompt, position])])
            assert focus["text"] == (text.replace("\n", "⏎").replace("\t", "⇥") or "∅")
            assert focus["alpha"] is not None and focus["alpha"] > 0.08  # highlighted
        # the top context's token is the latent's peak: fully shaded
        assert max(span["alpha"] or 0 for span in rows[0]) == pytest.approx(0.9)

    # certify.py on the run: verification, re-derivation and composition pass (no exception: exit 0)
    report = certify_in_process(tmp_path, tmp_path / "run", "model=tiny_llama").report
    assert report["certified_blocks"] == [BLOCK]
    (row,) = [r for r in report["blocks"] if r["block"] == BLOCK]
    assert row["eps_measured"] == pytest.approx(cert["metrics"]["eps_max"], rel=1e-5)
    assert report["bound"]["claimed"] >= report["stitched"]["observed_final_max"] > 0


def test_the_skip_transcoder_preset_trains_at_the_mlp_budget(tmp_path):
    """experiment=skip_transcoder (debug=tiny keeps the data small): a skip transcoder as wide
    as the teacher MLP's parameters allow, trained and certified."""
    (result,) = train_in_process(tmp_path, "experiment=skip_transcoder", f"block={BLOCK}").runs
    cert = json.loads((result.run_dir / "certificate.json").read_text())
    assert cert["surrogate"]["family"] == "llama_skip_transcoder"
    capacity = load_surrogate(result.run_dir).graph.capacity
    d, mlp = 64, 3 * 64 * capacity["teacher_mlp_width"]  # tiny_llama: d 64, gated MLP, no bias
    assert capacity["transcoder_width"] == width_for_params(d, mlp, skip=True)
    assert capacity["k"] == 32
    assert (result.run_dir / "latents.html").is_file()


def test_the_gated_transcoder_preset_trains_at_the_mlp_budget(tmp_path):
    """experiment=gated_transcoder (debug=tiny): gated latents with the skip path at the teacher
    MLP's parameter budget, trained, certified, its page written; certify.py composes it."""
    (result,) = train_in_process(tmp_path, "experiment=gated_transcoder", f"block={BLOCK}").runs
    cert = json.loads((result.run_dir / "certificate.json").read_text())
    assert cert["surrogate"]["family"] == "llama_gated_skip_transcoder"
    capacity = load_surrogate(result.run_dir).graph.capacity
    d, mlp = 64, 3 * 64 * capacity["teacher_mlp_width"]
    assert capacity["transcoder_width"] == width_for_params(d, mlp, skip=True, gated=True)
    assert capacity["k"] == 64
    report = json.loads((result.run_dir / "latents.json").read_text())
    assert report["signed"] and report["mean_l0"] <= 64
    assert (result.run_dir / "latents.html").is_file()
    report = certify_in_process(tmp_path, result.run_dir, "model=tiny_llama").report
    assert report["certified_blocks"] == [BLOCK]
    assert report["bound"]["claimed"] >= report["stitched"]["observed_final_max"] > 0


def test_a_presets_values_override_the_training_defaults():
    """conf/train.yaml lists _self_ before `experiment`: a preset's optim and trainer values
    win over the file's own defaults, and without a preset those defaults hold."""
    plain = compose_config("train")
    gated = compose_config("train", ["experiment=gated_transcoder"])
    assert plain.optim.max_aware_weight == 1.0 and gated.optim.max_aware_weight == 0
    assert gated.trainer.max_epochs == 6 and gated.data.n_train_prompts == 8192
    assert gated.surrogate.gated and gated.surrogate.skip and gated.surrogate.k == 64
    # the command line still wins over the preset
    override = compose_config("train", ["experiment=gated_transcoder", "optim.max_aware_weight=2"])
    assert override.optim.max_aware_weight == 2
