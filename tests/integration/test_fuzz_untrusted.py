"""Fuzzing the run directory: random mutations of a valid certificate, IR and token file.

Every outcome of the verification stages (collect, hashes, schema, IR, split, re-derivation) is
either a pass that reproduces the honest run's numbers, or a project error with exit code 2 or 3
and one line; never another exception, and never a file written by the mutated input.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest

from blockcert.certify import load_teacher, rederive, verify_certificates
from blockcert.errors import BlockCertError
from blockcert.evaluate.trajectory import teacher_trajectory
from blockcert.surrogate.ir import GRAPH_FILE
from tests.forgery import TOKENS_FILE, read_certificate, reseal
from tests.helpers import certify_config

MUTATIONS = 160


def _payload(rng: random.Random, sentinel) -> object:
    """A random JSON value; some are Hydra-style calls that would write `sentinel`."""
    kinds = [
        lambda: rng.randint(-(1 << 70), 1 << 70),
        lambda: rng.choice([0.0, -1.0, 1e308, -1e-300, 3.5]),
        lambda: rng.choice(["", "x" * 5000, "../../etc/passwd", "/dev/zero", "${oc.env:HOME}"]),
        lambda: rng.choice([True, False, None]),
        lambda: [rng.randint(0, 9) for _ in range(rng.randint(0, 5))],
        lambda: {"_target_": "pathlib.Path.touch", "self": str(sentinel)},
        lambda: {"_target_": "builtins.exec", "_args_": [f"open({str(sentinel)!r}, 'w')"]},
        lambda: {"nested": {"_target_": "os.system", "command": f"touch {sentinel}"}},
    ]
    return rng.choice(kinds)()


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*prefix, i))


def _mutate_tree(tree: dict, rng: random.Random, sentinel) -> None:
    """One random edit somewhere in `tree`: replace, delete, add a key, or nest a value."""
    path = rng.choice([p for p in _paths(tree) if p])
    parent = tree
    for key in path[:-1]:
        parent = parent[key]
    key, action = path[-1], rng.choice(["replace", "delete", "add", "nest"])
    if action == "replace":
        parent[key] = _payload(rng, sentinel)
    elif action == "delete" and isinstance(parent, dict):
        del parent[key]
    elif action == "add" and isinstance(parent[key], dict):
        parent[key][rng.choice(["_target_", "extra", "name", "path"])] = _payload(rng, sentinel)
    else:
        parent[key] = [parent[key]] if rng.random() < 0.5 else {"value": parent[key]}


def _mutate_bytes(path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    action = rng.choice(["truncate", "flip", "garbage", "empty"])
    if action == "truncate":
        data = data[: rng.randrange(len(data))]
    elif action == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif action == "garbage":
        data = bytearray(rng.randbytes(rng.randint(1, 4096)))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


def _mutate(run, rng: random.Random, sentinel) -> str:
    target = rng.choice(["certificate", "certificate", "graph", "tokens", "unsealed"])
    if target in ("certificate", "unsealed"):
        cert = read_certificate(run)
        _mutate_tree(cert, rng, sentinel)
        if target == "unsealed":  # edited without re-hashing
            (run / "certificate.json").write_text(json.dumps(cert))
        else:
            reseal(run, cert=lambda c: (c.clear(), c.update(cert)))
    elif target == "graph":
        graph = json.loads((run / GRAPH_FILE).read_text())
        _mutate_tree(graph, rng, sentinel)
        (run / GRAPH_FILE).write_text(json.dumps(graph))
        reseal(run)
    else:
        _mutate_bytes(run / TOKENS_FILE, rng)
        reseal(run)
    return target


@pytest.fixture(scope="module")
def honest(tmp_path_factory, tiny_reduced_run):
    """The teacher, config and re-derived eps of the untouched run."""
    tmp = tmp_path_factory.mktemp("fuzz")
    runs = tmp / "runs"
    shutil.copytree(tiny_reduced_run, runs / "block1")
    cfg = certify_config(tmp, runs)
    teacher = load_teacher(cfg)
    verified = verify_certificates(cfg, teacher, runs)
    states = teacher_trajectory(teacher.adapter, verified.heldout, cfg.batch_size)
    eps = rederive(verified, states, cfg, _tolerance())[1].eps_max
    return cfg, teacher, eps


def _tolerance():
    from blockcert.verify.claims import Tolerance

    return Tolerance()


def test_mutated_run_directories_pass_truly_or_fail_in_one_line(tmp_path, tiny_reduced_run, honest):
    cfg, teacher, honest_eps = honest
    rng = random.Random(20261207)
    sentinel = tmp_path / "sentinel"
    outcomes = {"passed": 0, "exit 2": 0, "exit 3": 0}
    for i in range(MUTATIONS):
        runs = tmp_path / f"m{i}" / "runs"
        shutil.copytree(tiny_reduced_run, runs / "block1")
        target = _mutate(runs / "block1", rng, sentinel)
        try:
            verified = verify_certificates(cfg, teacher, runs)
            states = teacher_trajectory(teacher.adapter, verified.heldout, cfg.batch_size)
            reports = rederive(verified, states, cfg, _tolerance())
        except BlockCertError as err:
            assert err.exit_code in (2, 3) and "\n" not in str(err), (target, str(err))
            outcomes[f"exit {err.exit_code}"] += 1
        else:  # a mutation that changed nothing the verifier reads: the honest numbers
            assert reports[1].eps_max == honest_eps, target
            outcomes["passed"] += 1
        assert not sentinel.exists(), f"mutation {i} ({target}) ran code it named"
        shutil.rmtree(tmp_path / f"m{i}")
    assert outcomes["exit 3"] > MUTATIONS // 2, outcomes  # the fuzzer reaches the checks
