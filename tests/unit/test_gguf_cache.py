"""The converted-GGUF cache: a reload reproduces the loaded teacher bit for bit."""

from __future__ import annotations

import pytest
import torch

from blockcert.hashing import tensors_sha256
from blockcert.models.gguf_cache import CONFIG_FILE, converted_dir, load_through_cache
from tests.conftest import load_teacher


def _counting_loader(teacher):
    calls = []

    def load():
        calls.append(1)
        return teacher.model, teacher.tokenizer

    return load, calls


def test_cached_reload_reproduces_weights_logits_and_tokens(tmp_path):
    teacher = load_teacher("tiny_llama")
    source = tmp_path / "model.gguf"
    source.write_bytes(b"stand-in for a GGUF file")
    load, calls = _counting_loader(teacher)
    first = load_through_cache(tmp_path / "cache", source, "float32", torch.float32, load)
    second = load_through_cache(tmp_path / "cache", source, "float32", torch.float32, load)
    assert len(calls) == 1  # the second load read the converted copy
    assert second[0] is not teacher.model
    assert tensors_sha256(second[0].state_dict()) == tensors_sha256(first[0].state_dict())
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(second[0](ids).logits, teacher.model(ids).logits)
    text = "To be, or not to be: that is the question."
    assert second[1](text)["input_ids"] == teacher.tokenizer(text)["input_ids"]


def test_cache_is_keyed_by_file_content_and_dtype(tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert converted_dir(tmp_path, a, "float32") != converted_dir(tmp_path, b, "float32")
    assert converted_dir(tmp_path, a, "float32") != converted_dir(tmp_path, a, "bfloat16")
    b.write_bytes(b"one")
    assert converted_dir(tmp_path, a, "float32") == converted_dir(tmp_path, b, "float32")


def test_an_occupied_cache_name_falls_back_to_the_source(tmp_path):
    teacher = load_teacher("tiny_llama")
    source = tmp_path / "model.gguf"
    source.write_bytes(b"x")
    directory = converted_dir(tmp_path / "cache", source, "float32")
    directory.mkdir(parents=True)  # e.g. a copy someone half-deleted: no config.json
    (directory / "stray").write_text("x")
    load, calls = _counting_loader(teacher)
    model, _ = load_through_cache(tmp_path / "cache", source, "float32", torch.float32, load)
    assert len(calls) == 1 and model is teacher.model  # loaded from the source, not the stray
    assert not (directory / CONFIG_FILE).is_file()  # the occupied name was left alone
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no staging
    (directory / "stray").unlink()  # an empty directory is taken over
    load_through_cache(tmp_path / "cache", source, "float32", torch.float32, load)
    load_through_cache(tmp_path / "cache", source, "float32", torch.float32, load)
    assert len(calls) == 2 and (directory / CONFIG_FILE).is_file()


def test_no_cache_dir_always_loads_the_source(tmp_path):
    teacher = load_teacher("tiny_llama")
    load, calls = _counting_loader(teacher)
    for _ in range(2):
        load_through_cache(None, tmp_path / "absent.gguf", "float32", torch.float32, load)
    assert len(calls) == 2


@pytest.mark.slow
def test_smollm2_cached_reload_matches_the_gguf_load(tmp_path):
    from omegaconf import OmegaConf

    from tests.conftest import model_config

    cfg = model_config("smollm2")
    direct = load_teacher_with(OmegaConf.merge(cfg, {"cache_dir": None}))
    OmegaConf.update(cfg, "cache_dir", str(tmp_path))
    load_teacher_with(cfg)  # converts
    cached = load_teacher_with(cfg)  # reads the copy
    assert cached.weights_sha256 == direct.weights_sha256
    assert cached.source == direct.source
    text = "Shall I compare thee to a summer's day?"
    assert cached.tokenizer(text)["input_ids"] == direct.tokenizer(text)["input_ids"]


def load_teacher_with(cfg):
    from hydra.utils import instantiate

    return instantiate(cfg)
