"""Run directories are untrusted input: parsed before use, never executed, never followed.

Each case edits a copy of a real tiny_llama run (re-hashing and re-sealing as a forger would)
and expects certify.py to end with one line naming the file and field (exit 3; a bad command
line: exit 2), never a traceback, a hang, a file written outside `out`, or code run.
"""

from __future__ import annotations

import json
import os
import struct
import threading

import pytest
import torch
from safetensors.torch import save_file

from blockcert.cli import preflight
from blockcert.errors import BlockCertError, VerificationError
from blockcert.evaluate.own_split import exceedance_p_value
from blockcert.surrogate.capacity import keep_neurons
from blockcert.surrogate.extract import extract_block
from blockcert.surrogate.ir import GRAPH_FILE, WEIGHTS_FILE, save_surrogate
from tests.forgery import TOKENS_FILE, read_certificate, reseal
from tests.helpers import certify_in_process, run_entry, run_script


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def _rejected(tmp_path, forged, match: str, *extra: str) -> str:
    with pytest.raises(VerificationError, match=match) as err:
        certify_in_process(tmp_path, forged.parent, *extra)
    return _one_line(err.value)


# ---- code execution: nothing a certificate names is ever called ----
def _pth_payload(tmp_path):
    """A directory holding a .pth file whose code would create `marker` if site ran it."""
    site_dir, marker = tmp_path / "evil-site", tmp_path / "pth-ran"
    site_dir.mkdir()
    (site_dir / "evil.pth").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    return site_dir, marker


def test_nested_target_in_the_recipe_fails_closed_from_the_cli(tmp_path, forged):
    written = tmp_path / "written-by-certify"
    payload = {"_target_": "pathlib.Path.write_text", "self": str(written), "data": "pwned"}
    corpus = {"_target_": "blockcert.capture.corpus.TextFileCorpus", "path": payload}
    reseal(forged, cert=lambda c: c["data"]["recipe"].update(corpus=corpus))
    proc = run_entry("certify", "model=tiny_llama", f"runs={forged.parent}", f"out={tmp_path}/out")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 3 and len(lines) == 1, proc.stderr[-2000:]
    assert "data.recipe.corpus" in lines[0]
    assert not written.exists() and not (tmp_path / "out" / "certify_report.json").exists()


def test_site_dir_payload_fails_closed_from_the_cli(tmp_path, forged):
    site_dir, marker = _pth_payload(tmp_path)
    payload = {"_target_": "site.addsitedir", "sitedir": str(site_dir)}
    reseal(forged, cert=lambda c: c["data"]["recipe"]["corpus"].update(extra=payload))
    proc = run_entry("certify", "model=tiny_llama", f"runs={forged.parent}", f"out={tmp_path}/out")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 3 and len(lines) == 1, proc.stderr[-2000:]
    assert "data.recipe.corpus" in lines[0] and not marker.exists()


def test_targets_in_free_form_fields_are_data_not_code(tmp_path, forged):
    """`_target_` in the recorded config and the Lipschitz parts verifies as plain data."""
    site_dir, marker = _pth_payload(tmp_path)
    payload = {"_target_": "site.addsitedir", "sitedir": str(site_dir)}

    def plant(c):
        c["config"]["data"]["corpus"] = payload
        c["config"]["nested"] = {"deeper": [payload, {"_target_": "os.system", "command": "x"}]}
        c["lipschitz"]["sound"]["parts"]["extra"] = payload

    reseal(forged, cert=plant)
    result = certify_in_process(tmp_path, forged.parent)
    assert result.report["verification"]["status"] == "passed" and not marker.exists()


# ---- malformed fields: one line naming the field, exit 3 ----
MALFORMED = {
    "coverage entries not mappings": (
        lambda c: c["metrics"].update(coverage=[1, 2]),
        "metrics.coverage",
    ),
    "surrogate.files as a list": (
        lambda c: c["surrogate"].update(files=[GRAPH_FILE, WEIGHTS_FILE]),
        "surrogate.files",
    ),
    "model as a string": (lambda c: c.update(model="tiny_llama"), "field model"),
    "recipe without seq_len": (lambda c: c["data"]["recipe"].pop("seq_len"), "seq_len"),
    "recipe with a string seed": (
        lambda c: c["data"]["recipe"].update(seed="0"),
        "data.recipe.seed",
    ),
    "block as a string": (lambda c: c.update(block="1"), "field block"),
    "eps_max as a string": (lambda c: c["metrics"].update(eps_max="0.01"), "metrics.eps_max"),
    "empty surrogate.files": (lambda c: c["surrogate"].update(files={}), "surrogate.files"),
    "only the IR bound": (
        lambda c: c["surrogate"]["files"].pop(WEIGHTS_FILE),
        "surrogate.files",
    ),
    "unknown top-level key": (lambda c: c.update(extra=1), "extra"),
    "absolute token file": (
        lambda c: c["data"].update(tokens_file="/etc/passwd"),
        "data.tokens_file",
    ),
    "token file outside the run": (
        lambda c: c["data"].update(tokens_file="../heldout_tokens.safetensors"),
        "data.tokens_file",
    ),
    "nested too deeply": (lambda c: c["config"].update(deep=_nested(200)), "nests deeper"),
}


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_certificate_field_is_one_line(tmp_path, forged, case):
    edit, field = MALFORMED[case]
    reseal(forged, cert=edit)
    line = _rejected(tmp_path, forged, "certificate.json")
    assert field in line


def test_json_deeper_than_python_can_parse_is_one_line(tmp_path, forged):
    (forged / "certificate.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "nests too deeply" in _rejected(tmp_path, forged, "certificate.json")


def _edit_node_json(field: str, value):
    def edit(graph: dict) -> None:
        node = next(n for n in graph["nodes"] if n["output"] == "attn")
        node[field] = value

    return edit


GRAPH_CASES = {
    "attrs as a list": (_edit_node_json("attrs", [1, 2]), "].attrs"),
    "weights as a list": (_edit_node_json("weights", ["q.weight"]), "].weights"),
    "string d_model": (lambda g: g.update(d_model="64"), "d_model"),
    "unknown graph key": (lambda g: g.update(exec="print(1)"), "exec"),
}


@pytest.mark.parametrize("case", sorted(GRAPH_CASES))
def test_malformed_ir_json_is_one_line(tmp_path, forged, case):
    edit, field = GRAPH_CASES[case]
    reseal(forged, graph=edit)
    line = _rejected(tmp_path, forged, "surrogate.json")
    assert field in line


def test_d_model_other_than_the_teachers_is_rejected(tmp_path, forged):
    def shrink(w):  # a consistent block of d_model 63 on a d_model 64 teacher
        for key in ("attn_norm.weight", "mlp_norm.weight", "attn_out.weight", "mlp_out.weight"):
            w[key] = w[key][:63].clone()  # norms, and the output rows of o and down
        for key in ("q.weight", "k.weight", "v.weight", "gate.weight", "up.weight"):
            w[key] = w[key][:, :63].clone()  # the input columns of the reading projections

    reseal(forged, graph=lambda g: g.update(d_model=63), weights=shrink)
    assert "field d_model" in _rejected(tmp_path, forged, "d_model")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_weights_other_than_float32_are_rejected(tmp_path, forged, dtype):
    reseal(forged, weights=lambda w: w.update({k: t.to(dtype) for k, t in w.items()}))
    assert "float32" in _rejected(tmp_path, forged, "surrogate.safetensors")


def test_a_surrogate_larger_than_the_teacher_block_is_refused_before_loading(tmp_path, forged):
    """An MLP 2^20 wide would allocate per tensor what the file only claims: the header's
    element count is checked against the teacher block first."""
    reseal(
        forged,
        weights=lambda w: w.update(pad=torch.zeros(40_000)),
        graph=lambda g: g["capacity"].update(mlp_width=1 << 20),
    )
    assert "more than the teacher block" in _rejected(tmp_path, forged, "surrogate.safetensors")


def test_family_other_than_the_teachers_is_rejected(tmp_path, forged, tiny_gpt2):
    """A valid gpt2 block (tiny_gpt2's own block 1) certified as a block of tiny_llama."""
    gpt2_block = extract_block(tiny_gpt2, 1)
    keep_neurons(gpt2_block, list(range(64)))  # smaller than the llama block it replaces
    gpt2_block.graph.capacity["mlp_width"] = 64
    save_surrogate(gpt2_block, forged)
    reseal(forged)
    assert "cannot replace a llama block" in _rejected(tmp_path, forged, "surrogate.family")


def test_header_shape_disagreeing_with_the_data_is_one_line(tmp_path, forged):
    header = json.dumps(
        {"q.weight": {"dtype": "F32", "shape": [1000, 64], "data_offsets": [0, 64]}}
    ).encode()
    (forged / WEIGHTS_FILE).write_bytes(struct.pack("<Q", len(header)) + header + bytes(64))
    reseal(forged)
    assert "offsets disagree" in _rejected(tmp_path, forged, "surrogate.safetensors")


@pytest.mark.parametrize(
    "content", [b"", b"not a safetensors file at all", struct.pack("<Q", 1 << 40) + b"{}"]
)
def test_malformed_token_file_is_one_line(tmp_path, forged, content):
    (forged / TOKENS_FILE).write_bytes(content)
    reseal(forged)
    _rejected(tmp_path, forged, TOKENS_FILE)


def test_token_file_of_another_dtype_is_rejected(tmp_path, forged):
    save_file({"input_ids": torch.zeros(8, 32, dtype=torch.int32)}, str(forged / TOKENS_FILE))
    reseal(forged)
    assert "int64" in _rejected(tmp_path, forged, "data.tokens_file")


# ---- links, pipes, devices and sizes ----
@pytest.mark.parametrize("name", ["certificate.json", GRAPH_FILE, WEIGHTS_FILE, TOKENS_FILE])
def test_symlinked_files_are_not_followed(tmp_path, forged, name):
    target = tmp_path / f"elsewhere-{name}"
    (forged / name).rename(target)
    (forged / name).symlink_to(target)
    assert "symlink" in _rejected(tmp_path, forged, name)


def test_link_to_dev_zero_is_not_read(tmp_path, forged):
    (forged / WEIGHTS_FILE).unlink()
    (forged / WEIGHTS_FILE).symlink_to("/dev/zero")
    assert "symlink" in _rejected(tmp_path, forged, WEIGHTS_FILE)


def test_oversized_certificate_is_not_read(tmp_path, forged):
    with open(forged / "certificate.json", "ab") as handle:
        handle.truncate(64 << 20)  # sparse: 64 MiB claimed, nothing read
    assert "cap" in _rejected(tmp_path, forged, "certificate.json")


def test_fifo_named_certificate_does_not_hang(tmp_path, forged):
    fifo = forged.parent / "other" / "certificate.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    outcome: list = []
    worker = threading.Thread(
        target=lambda: outcome.append(_rejected(tmp_path, forged, "not a regular file")),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=120)
    if worker.is_alive():  # unblock the reader before failing
        with open(fifo, "w"):
            pass
        pytest.fail("certify blocked on a FIFO named certificate.json")
    assert outcome and "other/certificate.json" in outcome[0]


def test_a_symlinked_run_directory_is_not_entered(tmp_path, forged):
    (forged.parent / "linked").symlink_to(forged)
    result = certify_in_process(tmp_path, forged.parent)
    assert result.report["certificates"] == {"1": str(forged / "certificate.json")}


# ---- the command line: exit 2 before anything runs ----
@pytest.mark.parametrize(
    ("entry", "argv", "says"),
    [
        ("certify", ["tolerance.eps_rel=abc"], "tolerance.eps_rel"),
        ("certify", ["block=abc"], "block"),
        ("certify", ["verifier.n_prompts=many"], "verifier.n_prompts"),
        ("train", ["block=abc"], "block"),
        ("edit", ["block=abc"], "block"),
    ],
)
def test_bad_command_line_is_one_line_exit_2(capsys, entry, argv, says):
    with pytest.raises(SystemExit) as stop:
        preflight(entry, argv, _entry_types(entry))
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and "\n" not in err and says in err, err


def test_out_naming_an_existing_file_is_exit_2(capsys, tmp_path):
    existing = tmp_path / "a-file"
    existing.write_text("keep me")
    with pytest.raises(SystemExit) as stop:
        preflight("certify", [f"out={existing}"], _entry_types("certify"))
    assert stop.value.code == 2 and "existing file" in capsys.readouterr().err
    assert existing.read_text() == "keep me"


def test_block_abc_exits_2_from_the_cli(tmp_path):
    proc = run_script("certify.py", "model=tiny_llama", "block=abc", f"out={tmp_path}/o")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "block" in lines[0], proc.stderr


def _entry_types(entry: str) -> dict:
    from blockcert import entry as entries

    return getattr(entries, f"{entry.upper()}_TYPES")


# ---- the verifier's own held-out prompts ----
@pytest.mark.parametrize(("n", "m"), [(8, 16), (96, 32), (5, 5)])
def test_exceedance_p_value_is_the_exchangeable_tail(n, m):
    """P(J >= j) against simulation: n held-out and m fresh i.i.d. values, J = the fresh
    values above the held-out max."""
    g = torch.Generator().manual_seed(0)
    draws = torch.rand(200_000, n + m, generator=g)
    above = (draws[:, n:] > draws[:, :n].amax(1, keepdim=True)).sum(1)
    for j in range(0, 4):
        simulated = float((above >= j).double().mean())
        assert abs(exceedance_p_value(n, m, j) - simulated) < 4e-3


def test_report_names_the_recipe_and_the_verifiers_own_split(tmp_path, forged):
    result = certify_in_process(tmp_path, forged.parent, "verifier.seed=7")
    recipe = read_certificate(forged)["data"]["recipe"]
    assert result.report["data"]["recipe"] == recipe
    own = result.report["own_split"]
    assert own["seed"] == 7 and own["exchangeable"] and own["n_prompts"] == 8
    (row,) = own["blocks"]
    assert row["block"] == 1 and row["eps_verifier"] > 0
    assert any("verifier's own prompts" in line for line in result.lines)


def test_a_verifier_split_disjoint_from_training(tmp_path, forged):
    """The verifier's prompts are drawn from the recipe's pool minus train and held-out, in
    three disjoint splits, hashed when drawn."""
    from blockcert.certify import load_teacher, verify_certificates
    from blockcert.evaluate.fresh_prompts import draw_fresh
    from blockcert.verify.split import rebuild_split
    from tests.helpers import certify_config

    cfg = certify_config(tmp_path, forged.parent)
    teacher = load_teacher(cfg)
    verified = verify_certificates(cfg, teacher, forged.parent)
    counts = {"own": 16, "calibration": 60, "check": 40}
    draw = draw_fresh(
        {"seed": 3, "corpus": "shakespeare"},
        counts,
        verified.recipe,
        verified.fresh_pool,
        teacher.model.tokenizer,
    )
    split = rebuild_split(verified.recipe, teacher.model.tokenizer)
    taken = {tuple(r) for r in torch.cat([split.train, split.heldout]).tolist()}
    rows = {name: {tuple(p.tolist()) for p in prompts} for name, prompts in draw.splits.items()}
    assert {name: len(r) for name, r in rows.items()} == counts  # no prompt twice
    assert not taken & (rows["own"] | rows["calibration"] | rows["check"])
    assert not rows["own"] & rows["calibration"] and not rows["calibration"] & rows["check"]
    again = draw_fresh(
        {"seed": 3, "corpus": "shakespeare"},
        counts,
        verified.recipe,
        verified.fresh_pool,
        teacher.model.tokenizer,
    )
    assert again.describe() == draw.describe()  # the seed and the hashes reproduce the draw


def test_certify_options_of_the_verifier_are_checked():
    from blockcert.evaluate.own_split import check_own_options

    with pytest.raises(BlockCertError, match="verifier.alpha"):
        check_own_options({"n_prompts": 4, "alpha": 2.0, "seed": None})


def _section(heldout: torch.Tensor, fresh: torch.Tensor, alpha: float) -> dict:
    from blockcert.evaluate.fresh_prompts import FreshDraw
    from blockcert.evaluate.own_split import own_split_section

    own = [torch.zeros(2, dtype=torch.int64)] * len(fresh)
    draw = FreshDraw({"own": own}, "pool", 0, True, 100, "2 tokens")
    certificate = {"metrics": {"eps_max": float(heldout.max()), "n_prompts": len(heldout)}}
    section, _ = own_split_section(
        {"alpha": alpha}, draw, {0: fresh}, {0: heldout}, {0: certificate}, {}
    )
    return section["blocks"][0]


def test_a_fair_split_is_flagged_at_most_at_rate_alpha():
    """Held-out and fresh prompts drawn at random from one pool of per-prompt errors."""
    g = torch.Generator().manual_seed(1)
    pool = torch.rand(400, generator=g) ** 3
    flags = 0
    for _ in range(400):
        order = torch.randperm(len(pool), generator=g)
        flags += _section(pool[order[:24]], pool[order[24:56]], alpha=0.05)["flagged"]
    assert flags / 400 <= 0.05 + 0.03  # binomial slack at 400 trials


def test_a_split_chosen_for_low_errors_is_flagged():
    """The author keeps the 24 easiest of 72 prompts as held-out (as a split of training
    windows, or the luckiest of many seeds, would look): the fresh prompts expose it."""
    g = torch.Generator().manual_seed(2)
    flags = 0
    for _ in range(50):
        order = torch.randperm(400, generator=g)
        pool = torch.rand(400, generator=g)
        heldout = pool[order[:72]].sort().values[:24]
        flags += _section(heldout, pool[order[72:104]], alpha=0.01)["flagged"]
    assert flags >= 45
