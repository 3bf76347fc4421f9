"""blocks=: one teacher pass for many blocks, certificates equal to single-block runs."""

import json

import pytest

from blockcert.capture.blocks import check_block, parse_blocks, select_blocks
from blockcert.errors import BlockCertError
from blockcert.models.adapters import LlamaAdapter
from blockcert.resources import compose_config
from blockcert.train import TrainResult, certificate_metrics, train

TINY = [  # on top of debug=tiny
    "data.n_heldout_prompts=4",
    "data.seq_len=16",
    "trainer.max_epochs=2",
    "lipschitz.empirical_prompts=1",
]


def _config(run_dir, cache, *overrides):
    return compose_config(
        "train", ["debug=tiny", *TINY, f"run_dir={run_dir}", f"cache.root={cache}", *overrides]
    )


@pytest.fixture
def teacher_batches(monkeypatch):
    """Counts batches that enter the teacher (every capture starts with embed)."""
    calls = []
    embed = LlamaAdapter.embed

    def counting(self, input_ids):
        calls.append(len(input_ids))
        return embed(self, input_ids)

    monkeypatch.setattr(LlamaAdapter, "embed", counting)
    return calls


def _claims(certificate: dict) -> str:
    """What certify.py re-derives, as canonical JSON: eps_max, coverage, IR hashes."""
    m = certificate["metrics"]
    return json.dumps(
        [m["eps_max"], m["coverage"], certificate["surrogate"]["files"]], sort_keys=True
    )


# five certificates, ~35 s each on 2 busy cores (the empirical Lipschitz ascent dominates)
@pytest.mark.slow
def test_blocks_all_runs_the_teacher_once_and_matches_single_block_runs(tmp_path, teacher_batches):
    result = train(_config(tmp_path / "all", tmp_path / "cache", "blocks=all"))
    assert [run.block for run in result.runs] == [0, 1, 2, 3]
    # one pass: every train and held-out prompt entered the teacher exactly once
    assert sum(teacher_batches) == 16 + 4 == result.teacher_prompts
    for run in result.runs:
        assert run.run_dir == tmp_path / "all" / f"block{run.block}"
        assert (run.run_dir / "certificate.json").is_file()
        sources = run.certificate["data"]["pairs_source"]
        assert set(sources) == {"train", "heldout"}
        assert all(s.startswith("teacher -> cache:") for s in sources.values())

    # a single-block run of the deepest block, capturing with its own pass into a fresh cache
    (alone,) = train(_config(tmp_path / "single", tmp_path / "c3", "block=3")).runs
    assert alone.run_dir == tmp_path / "single"
    assert _claims(alone.certificate) == _claims(result.runs[3].certificate)
    assert alone.certificate["lipschitz"] == result.runs[3].certificate["lipschitz"]
    assert result.metric("cert/eps_max") == pytest.approx(
        sum(run.certificate["metrics"]["eps_max"] for run in result.runs) / 4
    )

    # every pair is cached now: capturing the blocks again never runs the teacher
    teacher_batches.clear()
    again = train(_config(tmp_path / "again", tmp_path / "cache", "blocks=all", "stage=capture"))
    assert teacher_batches == [] and again.teacher_prompts == 0 and again.runs == []


def test_full_capacity_capture_only_reads_heldout_prompts(tmp_path, teacher_batches):
    cfg = _config(
        tmp_path / "run",
        tmp_path / "cache",
        "blocks='range(1,4,2)'",
        "surrogate.full_capacity=true",
        "stage=capture",
    )
    result = train(cfg)
    assert result.runs == [] and result.blocks == [1, 3]
    assert sum(teacher_batches) == 4  # held-out prompts only: nothing is trained
    assert len(list((tmp_path / "cache").glob("block*/manifest.json"))) == 2
    assert not (tmp_path / "run").exists()


def test_parse_and_select_blocks():
    assert parse_blocks("all") is None
    assert parse_blocks("range(20, 30)") == list(range(20, 30))
    assert parse_blocks("range(0,10,3)") == [0, 3, 6, 9]
    assert parse_blocks("0,5,12") == [0, 5, 12]
    assert parse_blocks([5, 0]) == [5, 0] and parse_blocks(7) == [7]
    assert select_blocks("all", 3) == [0, 1, 2]
    assert select_blocks([2, 0, 2], 3) == [0, 2]
    for bad in ("abc", "range(3,3)", "range(0,4,0)", [], [1.5], ["x"], True):
        with pytest.raises(BlockCertError, match="blocks="):
            parse_blocks(bad)
    with pytest.raises(BlockCertError, match="block=9 is out of range: m has blocks 0..2"):
        select_blocks([0, 9], 3, "m")
    with pytest.raises(BlockCertError, match="must be an integer"):
        check_block("abc", 3)


def test_optimized_metric_is_read_from_the_certificates():
    cert = {
        "metrics": {
            "eps_max": 2.0,
            "p99": 1.0,
            "coverage": [{"kind": "abs", "tau": 1.0, "fraction": 0.5, "unit": "token"}],
        },
        "lipschitz": {"sound": {"value": None}, "empirical": {"value": 3.0}},
        "surrogate": {"params": 10},
    }
    flat = certificate_metrics(cert)
    assert flat == {
        "cert/eps_max": 2.0,
        "cert/p99": 1.0,
        "cert/coverage_abs@1_token": 0.5,
        "cert/lipschitz_empirical": 3.0,
        "cert/params": 10.0,
    }
    result = TrainResult([0], [], 0)
    with pytest.raises(BlockCertError, match="optimized_metric"):
        result.metric("cert/eps_max")
