"""compose_config: the packaged configs composed as the entry scripts would, also from inside a
running Hydra entry point (edit.py re-certifies its run in-process)."""

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from blockcert.resources import CONF_DIR, compose_config


def test_compose_config_leaves_no_hydra_state_behind():
    assert not GlobalHydra.instance().is_initialized()
    cfg = compose_config("certify", ["model=tiny_llama"])
    assert cfg.model.name == "tiny_llama"
    assert not GlobalHydra.instance().is_initialized()


def test_compose_config_inside_a_running_entry_point_restores_its_hydra():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        outer = compose(config_name="edit")
        inner = compose_config("certify", ["model=tiny_llama"])  # edit.py re-certifying
        assert inner.model.name == "tiny_llama" and "runs" in inner
        assert GlobalHydra.instance().is_initialized()  # the entry's Hydra is back
        assert compose(config_name="edit") == outer
    assert not GlobalHydra.instance().is_initialized()
