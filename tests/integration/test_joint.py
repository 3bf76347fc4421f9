"""End-to-end pass on tiny_llama: lowers the stitched KL on held-out prompts; every block
re-certifies and certify.py verifies the set."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from blockcert.capture.prompts import build_prompts
from blockcert.evaluate.trajectory import stitched_evaluation, teacher_trajectory
from blockcert.lit.cascade import cascade_surrogates, distil
from blockcert.lit.joint import joint_finetune, next_token_kl
from blockcert.lit.recertify import recertify
from blockcert.surrogate.capacity import Capacity
from blockcert.surrogate.extract import extract_block
from tests.conftest import CONF
from tests.helpers import run_script

CUT = Capacity(head_fraction=0.5, mlp_fraction=0.5)


def _cut_surrogates(adapter, ids):
    states = teacher_trajectory(adapter, ids, 8)
    return {k: CUT.build(extract_block(adapter, k), [states[k]]) for k in range(adapter.num_blocks)}


def _heldout_kl(adapter, surrogates, ids):
    states = teacher_trajectory(adapter, ids, 8)
    return stitched_evaluation(adapter, surrogates, ids, states, 8).kl_mean


def test_next_token_kl_matches_definition():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(2, 3, 11, generator=g), torch.randn(2, 3, 11, generator=g)
    p_prob, q_prob = p.softmax(-1), q.softmax(-1)
    expected = (p_prob * (p_prob.log() - q_prob.log())).sum(-1).mean()
    torch.testing.assert_close(next_token_kl(p, q), expected)
    assert float(next_token_kl(p, p)) == 0.0


def test_end_to_end_pass_lowers_heldout_kl(tiny_llama):
    g = torch.Generator().manual_seed(5)
    train, heldout = (
        torch.randint(0, 256, (48, 24), generator=g),
        torch.randint(0, 256, (16, 24), generator=g),
    )
    surrogates = _cut_surrogates(tiny_llama, train)
    before = _heldout_kl(tiny_llama, surrogates, heldout)
    tuned = joint_finetune(tiny_llama, surrogates, train, batch_size=8, max_epochs=8, lr=1e-3)
    after = _heldout_kl(tiny_llama, tuned, heldout)
    assert sorted(tuned) == sorted(surrogates)
    assert after < 0.8 * before, (before, after)
    for k, s in tuned.items():  # structure kept: same graph, same shapes, new values
        assert s.graph.capacity == surrogates[k].graph.capacity
        assert {n: w.shape for n, w in s.weights.items()} == {
            n: w.shape for n, w in surrogates[k].weights.items()
        }


@pytest.mark.slow  # certifies 4 blocks (sound Lipschitz) and runs certify.py: ~1-2 min
def test_every_block_recertifies_after_the_pass(tmp_path, tiny_llama):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "model=tiny_llama",
                "data.n_train_prompts=16",
                "data.n_heldout_prompts=8",
                "data.seq_len=32",
                f"cache.root={tmp_path}/cache",
                f"run_dir={tmp_path}/runs",
                "lipschitz.empirical_prompts=2",
            ],
        )
    config = OmegaConf.to_container(cfg, resolve=True)
    data = cfg.data
    prompts = build_prompts(
        instantiate(data.corpus),
        tiny_llama.teacher.tokenizer,
        seq_len=data.seq_len,
        n_train=data.n_train_prompts,
        n_heldout=data.n_heldout_prompts,
        seed=data.seed,
    )
    surrogates = cascade_surrogates(
        tiny_llama,
        prompts.train,
        8,
        lambda k, x: CUT.build(extract_block(tiny_llama, k), x),
        lambda k, s, pairs: distil(s, pairs, max_epochs=1),
    )
    tuned = joint_finetune(tiny_llama, surrogates, prompts.train, batch_size=8, max_epochs=1)
    runs = tmp_path / "runs"
    certificates = recertify(tiny_llama, tuned, prompts, runs, config)
    assert sorted(certificates) == list(range(tiny_llama.num_blocks))
    for k, certificate in certificates.items():
        assert certificate["block"] == k
        assert (runs / f"block{k}" / "certificate.json").is_file()
        assert certificate["surrogate"]["capacity"]["mlp_width"] == 64
    out = tmp_path / "report"
    proc = run_script(
        "certify.py",
        "model=tiny_llama",
        f"runs={runs}",
        f"out={out}",
        f"lean.root={tmp_path}/lean",
        "lipschitz.random_trials=2",
        "lipschitz.ascent_steps=3",
        "lean.build=false",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "certify_report.json").read_text())
    assert report["certified_blocks"] == list(range(tiny_llama.num_blocks))
