"""train in-process on tiny models: exact full-capacity blocks, checked options, clear errors."""

import json

import pytest

from blockcert.cert.lipschitz import LipschitzOptions
from blockcert.errors import BlockCertError
from tests.helpers import train_in_process


def test_full_capacity_gpt2_is_exact(tmp_path):
    (run,) = train_in_process(
        tmp_path,
        "model=tiny_gpt2",
        "block=2",
        "surrogate.full_capacity=true",
        "lipschitz.sound_prompts=3",
    ).runs
    cert = json.loads((run.run_dir / "certificate.json").read_text())
    assert cert["metrics"]["eps_max"] <= 1e-5
    sound = cert["lipschitz"]["sound"]["parts"]
    assert sound["prompts"] == 3 and sound["tokens"] == 3 * 32
    assert cert["surrogate"]["params"] == cert["surrogate"]["teacher_params"]


def test_lipschitz_prompt_counts_are_checked():
    LipschitzOptions.from_config({"empirical_prompts": 0, "sound_prompts": None})
    LipschitzOptions.from_config({"empirical_prompts": 3, "sound_prompts": 0})
    for key, bad in (
        ("empirical_prompts", None),
        ("sound_prompts", -2),
        ("empirical_prompts", True),
        ("tube_shells", 0),
    ):
        options = {"empirical_prompts": 1, "sound_prompts": 1, key: bad}
        with pytest.raises(BlockCertError, match=f"lipschitz.{key}="):
            LipschitzOptions.from_config(options)
    with pytest.raises(BlockCertError, match="lipschitz.shells is not a Lipschitz option"):
        LipschitzOptions.from_config({"shells": 2})


def test_empty_corpus_is_one_line_and_writes_nothing(tmp_path):
    corpus = tmp_path / "empty"
    corpus.mkdir()
    (corpus / "a.txt").write_text("")
    with pytest.raises(BlockCertError, match="0 prompts") as err:
        train_in_process(tmp_path, "block=0", "data=text", f"data.corpus.path={corpus}")
    assert "\n" not in str(err.value)
    assert not list(tmp_path.rglob("certificate.json"))
