import dataclasses
import typing
from pathlib import Path

import pytest

from taildistill import config as C
from taildistill.config import dump_config
from taildistill.errors import ConfigError
from taildistill.experiment import build_config, load_config
from taildistill.methods import METHODS, resolve_params
from taildistill.typed import choices

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "taildistill" / "configs"


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        build_config({"train": {"epoch": 3}})
    msg = str(e.value)
    assert "'train.epoch'" in msg and "epochs" in msg and "batch_size" in msg


def test_unknown_method_param_is_rejected():
    with pytest.raises(ConfigError, match="'method.temprature'.*temperature"):
        build_config({"method": {"name": "kd", "temprature": 2}})


@pytest.mark.parametrize("method,foreign", [("kd", "dive_power"), ("kd", "ltkd_alpha"), ("bkd", "dkd_beta"),
                                            ("ce", "temperature"), ("ltkd", "cckd_prior_source")])
def test_a_method_accepts_only_its_own_parameters(method, foreign):
    with pytest.raises(ConfigError, match=f"'method.{foreign}'"):
        build_config({"method": {"name": method, foreign: 1}})


def test_kd_resolves_to_its_own_parameters_only():
    params = dataclasses.asdict(resolve_params("kd", {}))
    assert set(params) == {"sup_loss", "sup_weight", "label_smoothing", "drw_epoch", "cb_beta", "focal_gamma",
                           "ldam_max_margin", "ldam_scale", "la_tau", "vs_gamma", "vs_tau", "lade_alpha", "lade_lambda",
                           "kd_weight", "temperature"}


def test_unknown_method_lists_available():
    with pytest.raises(ConfigError, match="unknown method 'kdd'.*bkd.*ltkd"):
        build_config({"method": {"name": "kdd"}})


def _literal_fields():
    """Every Literal (enum-like) field of the experiment config and of every method's parameters."""
    out = []
    for section in ("data", "augment", "optim", "schedule", "train"):
        cls = typing.get_type_hints(C.ExperimentConfig)[section]
        for name, tp in typing.get_type_hints(cls).items():
            if choices(tp):
                out.append((f"{section}.{name}", {}))
    for method in METHODS.names():
        for name, tp in typing.get_type_hints(METHODS.get(method).Params).items():
            if choices(tp):
                out.append((f"method.{name}", {"method": {"name": method}}))
    return out


@pytest.mark.parametrize("key,raw", _literal_fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_typo_in_every_enum_field_fails_at_load_time_naming_the_choices(key, raw):
    with pytest.raises(ConfigError, match=rf"'{key}' must be one of .*; got 'zzz'"):
        build_config(raw, [f"{key}=zzz"])


def test_enum_fields_cover_the_known_ones():
    keys = {k for k, _ in _literal_fields()}
    assert {"schedule.name", "optim.name", "data.profile", "data.sampler", "data.group_policy", "train.precision",
            "train.compile_mode", "augment.autoaugment", "method.sup_loss", "method.ltkd_groups",
            "method.cckd_prior_source"} <= keys


def test_registry_names_fail_at_load_time():
    with pytest.raises(ConfigError, match="unknown data source 'digitz'"):
        build_config({"data": {"source": "digitz"}})
    with pytest.raises(ConfigError, match="unknown model 'resnet33'"):
        build_config({"model": {"name": "resnet33"}})
    with pytest.raises(ConfigError, match="unknown distillation criterion 'ltdk'"):
        build_config({"method": {"name": "deitlt", "dist_criterion": "ltdk"}})


@pytest.mark.parametrize("override,key", [("train.epochs=-1", "train.epochs"), ("train.epochs=-3", "train.epochs"),
                                          ("train.batch_size=0", "train.batch_size"), ("optim.lr=-1", "optim.lr"),
                                          ("data.ratio=0.5", "data.ratio"), ("train.device=gpu", "train.device"),
                                          ("method.temperature=0", "method.temperature")])
def test_out_of_range_values_fail_at_load_time(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config({"method": {"name": "kd"}}, [override])


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
    assert cfg.method.params.bkd_start_epoch == 3
    assert cfg.method.params.temperature == 2.0  # BKD's default (the paper's T = 2)
    assert type(cfg.method.params) is METHODS.get("bkd").Params


def test_method_name_override_drops_the_previous_methods_parameters_whatever_the_order():
    cfg = build_config({"method": {"name": "bkd", "bkd_start_epoch": 160}}, ["method.temperature=3", "method.name=kd"])
    assert cfg.method.name == "kd" and cfg.method.params.temperature == 3.0


def test_model_name_change_drops_the_old_models_kwargs(tmp_path):
    cfg = build_config({"model": {"name": "convnet_small", "kwargs": {"width": 8}}}, ["model.name=resnet32"])
    assert cfg.model.kwargs == {}
    (tmp_path / "a.yaml").write_text("model: {name: convnet_small, kwargs: {width: 8}}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmodel: {name: resnet32, kwargs: {cosine_head: true}}\n")
    assert load_config(tmp_path / "b.yaml").model.kwargs == {"cosine_head": True}


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
    deit = build_config({"name": "d", "method": {"name": "deitlt", "dist_criterion": "cckd", "dist": {"temperature": 3}}})
    p.write_text(dump_config(deit))
    assert load_config(p) == deit and load_config(p).method.params.dist.temperature == 3.0


def test_base_composition_and_env(tmp_path, monkeypatch):
    (tmp_path / "_base.yaml").write_text("train: {epochs: 3, batch_size: 16}\ndata: {root: '${MY_ROOT:-default/dir}'}\n")
    (tmp_path / "child.yaml").write_text("base: _base.yaml\ntrain: {epochs: 5}\nmethod: {name: kd}\n")
    monkeypatch.setenv("TAILDISTILL_DATA", "/data/here")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.data.root, cfg.name) == (5, 16, "/data/here/default/dir", "child")
    monkeypatch.setenv("MY_ROOT", "/elsewhere")
    assert load_config(tmp_path / "child.yaml").data.root == "/elsewhere"


def test_base_list_composes_a_dataset_and_a_method_file(tmp_path):
    (tmp_path / "data.yaml").write_text("out_dir: runs/bench\ntrain: {epochs: 3}\ndata: {ratio: 50}\n")
    (tmp_path / "kd.yaml").write_text("method: {name: kd, temperature: 3}\n")
    (tmp_path / "exp.yaml").write_text("base: [data.yaml, kd.yaml]\nmethod: {kd_weight: 2}\n")
    cfg = load_config(tmp_path / "exp.yaml")
    assert (cfg.train.epochs, cfg.data.ratio, cfg.method.name) == (3, 50.0, "kd")
    assert (cfg.method.params.temperature, cfg.method.params.kd_weight) == (3.0, 2.0)
    assert cfg.teacher.run == "runs/bench/ce_teacher"  # a distillation method's default teacher: the benchmark's
    # several files on the command line compose the same way
    same = load_config([tmp_path / "data.yaml", tmp_path / "kd.yaml"], ["method.kd_weight=2"])
    assert same.method == cfg.method and same.name == "kd"


def test_input_paths_never_depend_on_the_current_folder(tmp_path, monkeypatch):
    """In a config file, `./x` is relative to that file and `x` to the data folder; on the command
    line (typed in a shell) relative to the current folder."""
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "base.yaml").write_text("data: {root: ./mine, test_root: cifar-test.tar.gz, lists: {train: ../l.txt}}\n")
    (tmp_path / "cfgs" / "exp.yaml").write_text("base: base.yaml\nteacher: {checkpoint: ./t.safetensors, model: resnet32}\n"
                                                "method: {name: kd}\n")
    monkeypatch.setenv("TAILDISTILL_DATA", str(tmp_path / "datadir"))
    monkeypatch.chdir(tmp_path / "cfgs")
    cfg = load_config("exp.yaml")
    assert cfg.data.root == str(tmp_path / "cfgs" / "mine") and cfg.data.lists["train"] == str(tmp_path / "l.txt")
    assert cfg.data.test_root == str(tmp_path / "datadir" / "cifar-test.tar.gz")
    assert cfg.teacher.checkpoint == str(tmp_path / "cfgs" / "t.safetensors")
    monkeypatch.chdir(tmp_path)
    assert load_config("cfgs/exp.yaml") == cfg  # the same wherever it is run from
    assert load_config("cfgs/exp.yaml", ["data.root=here"]).data.root == str(tmp_path / "here")
    # model weights and word vectors are input files too, in a file and on the command line
    (tmp_path / "cfgs" / "text.yaml").write_text("model: {name: textcnn, kwargs: {vectors: glove.txt, weights: ./w.pth}}\n")
    text = load_config("cfgs/text.yaml")
    assert text.model.kwargs == {"vectors": str(tmp_path / "datadir" / "glove.txt"), "weights": str(tmp_path / "cfgs" / "w.pth")}
    typed = load_config("cfgs/text.yaml", ["model.kwargs.vectors=mine.txt", "model.kwargs.embed_dim=8"])
    assert typed.model.kwargs["vectors"] == str(tmp_path / "mine.txt") and typed.model.kwargs["embed_dim"] == 8
    # a run's weights a model starts from (a stage-1 network): relative to the current folder in a
    # file, as teacher runs are (runs/...), and made absolute when typed, so config.yaml names the file
    (tmp_path / "cfgs" / "ncm.yaml").write_text("model: {name: decoupled, kwargs: {checkpoint: runs/ce/last.safetensors}}\n")
    assert load_config("cfgs/ncm.yaml").model.kwargs["checkpoint"] == "runs/ce/last.safetensors"
    typed = load_config("cfgs/ncm.yaml", ["model.kwargs.checkpoint=runs/ce2/last.safetensors"])
    assert typed.model.kwargs["checkpoint"] == str(tmp_path / "runs" / "ce2" / "last.safetensors")


def test_a_base_cycle_is_an_error_naming_the_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(tmp_path / "a.yaml")


def test_references_to_other_keys(tmp_path):
    cfg = build_config({"out_dir": "runs/x", "method": {"name": "kd"}, "teacher": {"run": "${out_dir}/t"}})
    assert cfg.teacher.run == "runs/x/t"
    assert build_config({"teacher": {"run": "${out_dir}/t"}, "method": {"name": "kd"}}).teacher.run == "runs/t"  # default
    with pytest.raises(ConfigError, match="not a config value"):
        build_config({"teacher": {"run": "${nope.key}/t"}, "method": {"name": "kd"}})


def test_a_teacher_for_a_method_without_one_is_an_error():
    with pytest.raises(ConfigError, match="uses no teacher"):
        build_config({"method": {"name": "ce"}, "teacher": {"run": "runs/t"}})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("digits/ce_teacher").model.kwargs == {"width": 48}
    assert load_config("configs/digits/ce_teacher.yaml").name == "ce_teacher"
    mine = tmp_path / "mine" / "digits"
    mine.mkdir(parents=True)
    (mine / "ce_teacher.yaml").write_text("base: " + str(CONFIGS / "digits" / "_base.yaml") + "\nmodel: {kwargs: {width: 5}}\n")
    monkeypatch.setenv("TAILDISTILL_CONFIG_PATH", str(tmp_path / "mine"))
    assert load_config("digits/ce_teacher").model.kwargs == {"width": 5}  # a user's folder is searched first


def test_shipped_configs_are_valid_and_not_duplicated():
    files = [p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "reproduce"]
    assert len(files) >= 40
    # no two files are the same experiment under another name: each adds something of its own
    seen: dict[str, Path] = {}
    for p in files:
        cfg = load_config(p, ["name=x"])
        if p.name.startswith("_"):  # a base: not an experiment of its own
            continue
        key = dump_config(cfg)
        assert key not in seen, f"{p} is the same experiment as {seen[key]}"
        seen[key] = p
    # every method has its file, and method files hold nothing but the method
    shipped = {n for n in METHODS.names() if METHODS.get(n).__module__.startswith("taildistill.")}  # not the tests' own
    # (except the methods that need a model of their own: a two-head ViT, a spiking transformer, a
    # multi-expert network; their configs set the model too)
    assert {p.stem for p in (CONFIGS / "methods").glob("*.yaml")} >= shipped - {"deitlt", "ltsf", "ride", "ride_distill"}
    for p in (CONFIGS / "methods").glob("*.yaml"):
        assert set(C.load_raw(p)) == {"method"}, p


def test_every_suite_run_resolves():
    import yaml

    for suite in (CONFIGS / "reproduce").glob("*.yaml"):
        for run in yaml.safe_load(suite.read_text())["runs"]:
            files = run["config"] if isinstance(run["config"], list) else [run["config"]]
            load_config([CONFIGS / f for f in files], list(run.get("overrides", [])))


def test_base_with_another_method_drops_the_base_method_params(tmp_path):
    (tmp_path / "a.yaml").write_text("method: {name: bkd, bkd_start_epoch: 160}\ntrain: {epochs: 9}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmethod: {name: ce, label_smoothing: 0.1}\n")
    (tmp_path / "c.yaml").write_text("base: a.yaml\nmethod: {temperature: 3}\n")
    b = load_config(tmp_path / "b.yaml")
    assert b.method.name == "ce" and b.method.params.label_smoothing == 0.1 and b.train.epochs == 9
    c = load_config(tmp_path / "c.yaml")
    assert c.method.name == "bkd" and c.method.params.bkd_start_epoch == 160 and c.method.params.temperature == 3


def test_flattened_criterion_parameters_do_not_collide_with_the_supervised_ones():
    """A logit method's parameters are the supervised ones plus its criterion's, in one namespace:
    a shared name would silently serve two meanings."""
    from taildistill.methods import SupervisedParams
    from taildistill.methods.logit import LogitDistill

    sup = {f.name for f in dataclasses.fields(SupervisedParams)}
    flattened = [METHODS.get(n).Criterion for n in METHODS.names() if issubclass(METHODS.get(n), LogitDistill)]
    assert len(flattened) == 8
    for crit in flattened:
        own = {f.name for f in dataclasses.fields(crit.Params)}
        assert not own & sup, crit.__name__
