import pytest

from taildistill.config import build_config, dump_config, load_config
from taildistill.errors import ConfigError


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_config({"train": {"epoch": 3}})
    msg = str(e.value)
    assert "'train.epoch'" in msg and "epochs" in msg and "batch_size" in msg


def test_unknown_method_param_is_rejected():
    with pytest.raises(ConfigError, match="'method.temprature'.*temperature"):
        build_config({"method": {"name": "kd", "temprature": 2}})


def test_unknown_method_lists_available():
    with pytest.raises(ConfigError, match="unknown method 'kdd'.*bkd.*ltkd"):
        build_config({"method": {"name": "kdd"}})


@pytest.mark.parametrize("raw,key", [
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"train": {"epochs": 2.5}}, "train.epochs"),
    ({"augment": {"flip": "yes"}}, "augment.flip"),
    ({"data": {"group_cuts": 3}}, "data.group_cuts"),
    ({"optim": {"lr": [0.1]}}, "optim.lr"),
    ({"data": 5}, "data"),
])
def test_type_errors_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config(raw)


def test_overrides_and_method_defaults_are_resolved():
    cfg = build_config({"method": {"name": "bkd"}}, ["train.epochs=7", "method.bkd_start_epoch=3", "data.ratio=50", "optim.lr=1e-2"])
    assert cfg.train.epochs == 7 and cfg.data.ratio == 50.0 and cfg.optim.lr == 0.01
    assert cfg.method.params["bkd_start_epoch"] == 3
    assert cfg.method.params["temperature"] == 2.0  # BKD's default (the paper's T = 2)
    assert cfg.method.params["criterion"] == "bkd"


def test_override_errors():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        build_config({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="'train.nope'"):
        build_config({}, ["train.nope=1"])


def test_dump_round_trip(tmp_path):
    cfg = build_config({"name": "x", "method": {"name": "ltkd", "ltkd_alpha": 0.5}}, ["data.group_cuts=[3, 7]"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    again = load_config(p)
    assert again == cfg


def test_base_composition_and_env(tmp_path, monkeypatch):
    (tmp_path / "_base.yaml").write_text("train: {epochs: 3, batch_size: 16}\ndata: {root: '${MY_ROOT:-default/dir}'}\n")
    (tmp_path / "child.yaml").write_text("base: _base.yaml\ntrain: {epochs: 5}\nmethod: {name: kd}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.root, cfg.name) == (5, 16, "default/dir", "child")
    monkeypatch.setenv("MY_ROOT", "/elsewhere")
    assert load_config(tmp_path / "child.yaml").data.root == "/elsewhere"


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    files = [p for p in root.rglob("*.yaml") if not p.name.startswith("_") and p.parent.name != "reproduce"]
    assert len(files) >= 15
    for p in files:
        load_config(p)


def test_base_with_another_method_drops_the_base_method_params(tmp_path):
    (tmp_path / "a.yaml").write_text("method: {name: bkd, bkd_start_epoch: 160}\ntrain: {epochs: 9}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmethod: {name: ce, label_smoothing: 0.1}\n")
    (tmp_path / "c.yaml").write_text("base: a.yaml\nmethod: {temperature: 3}\n")
    b = load_config(tmp_path / "b.yaml")
    assert b.method.name == "ce" and b.method.params["label_smoothing"] == 0.1 and b.train.epochs == 9
    c = load_config(tmp_path / "c.yaml")
    assert c.method.name == "bkd" and c.method.params["bkd_start_epoch"] == 160 and c.method.params["temperature"] == 3
