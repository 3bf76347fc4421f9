"""Capacity sweeps reuse cached pairs; the Pareto table collects every point."""

import json

from blockcert.pareto import Point, collect_points, main, markdown_table, pareto_front
from tests.conftest import run_script


def test_two_point_sweep_runs_the_teacher_once(tmp_path):
    proc = run_script(
        "train.py",
        "-m",
        "model=tiny_llama",
        "block=1",
        "surrogate.mlp_fraction=0.5,0.9",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
        "data.n_train_prompts=16",
        "data.n_heldout_prompts=8",
        "data.seq_len=32",
        "trainer.max_epochs=1",
        "logger=csv",
        "callbacks.certificate.lipschitz_prompts=2",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    certs = sorted(tmp_path.rglob("certificate.json"))
    assert len(certs) == 2
    sources = [json.loads(c.read_text())["data"]["pairs_source"] for c in certs]
    first, second = sorted(sources, key=lambda s: "teacher" not in s["train"])
    assert first["train"].startswith("teacher -> cache:") and first["heldout"].startswith("teacher")
    assert second["train"].startswith("cache:") and second["heldout"].startswith("cache:")
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train + held-out, once each

    assert main([str(tmp_path), "--no-wandb"]) == 0
    table = (tmp_path / "pareto.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| 1 |")]) == 2
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert len(collect_points(tmp_path)) == 2


def _point(params, eps):
    return Point("r", 0, params, 100, eps, 0.0, {"abs<=1": 1.0}, {})


def test_pareto_front_drops_dominated_points():
    points = [_point(50, 3.0), _point(60, 4.0), _point(70, 1.0), _point(40, 5.0)]
    front = pareto_front(points)
    assert [(p.params, p.eps_max) for p in front] == [(40, 5.0), (50, 3.0), (70, 1.0)]
    assert markdown_table(points).count("| yes |") == 3
