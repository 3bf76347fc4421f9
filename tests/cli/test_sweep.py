"""Capacity sweeps reuse cached pairs; the Pareto table collects every point."""

import json

import pytest

from blockcert.pareto import Point, collect_points, main, markdown_table, pareto_front
from tests.helpers import run_entry, run_script


def test_two_point_sweep_runs_the_teacher_once(tmp_path):
    proc = run_entry(
        "train",
        "-m",
        "debug=tiny",
        "block=1",
        "surrogate.mlp_fraction=0.5,0.9",
        f"runs_root={tmp_path}",
        f"cache.root={tmp_path}/cache",
        "lipschitz.empirical_prompts=2",
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


@pytest.mark.slow
def test_capture_once_then_submitit_jobs_per_block_then_certify(tmp_path):
    """The SLURM launcher's code path (submitit, jobs as local processes) after one capture."""
    common = [
        "model=tiny_llama",
        f"runs_root={tmp_path}/runs",
        f"cache.root={tmp_path}/cache",
        "data.n_train_prompts=16",
        "data.n_heldout_prompts=4",
        "data.seq_len=16",
        "trainer.max_epochs=1",
        "logger=csv",
        "lipschitz.empirical_prompts=1",
    ]
    capture = run_script("train.py", "blocks=[0,1]", "stage=capture", *common)
    assert capture.returncode == 0, capture.stderr[-3000:]
    assert len(list((tmp_path / "cache").glob("block*/manifest.json"))) == 4
    assert not list(tmp_path.rglob("certificate.json"))

    sweep = run_script("train.py", "-m", "launcher=submitit_local", "block=0,1", *common)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "runs" / "tiny_llama" / "multirun").iterdir()
    assert list(sweep_dir.glob(".submitit/*/*_result.pkl"))  # really ran as submitit jobs
    certs = sorted(sweep_dir.rglob("certificate.json"))
    assert [json.loads(c.read_text())["block"] for c in certs] == [0, 1]
    for cert in certs:
        sources = json.loads(cert.read_text())["data"]["pairs_source"]
        assert all(s.startswith("cache:") for s in sources.values())  # no teacher run

    report = run_script(
        "certify.py", "model=tiny_llama", f"runs={sweep_dir}", f"out={tmp_path}/report"
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report" / "certify_report.json").is_file()
