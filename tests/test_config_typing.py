"""No silent wrong run: every override and config-file value is applied as written or refused.

Overrides are parsed with hydra's grammar and checked against the type the key takes; config
files (.py and .yaml) are checked for unknown keys (``_target_`` arguments, ``train.*`` keys)
and for mistyped ``train.*`` values.
"""
import re
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from eva_core.config import (ConfigFileError, ConfigValueError, L, LazyConfig, UnknownConfigKeyError,
                             instantiate, register_train_keys)
from eva_core.config import train_schema

REPO = Path(__file__).resolve().parents[1]


def _config():
    """A recipe-shaped config: the common train keys, a model, an optimizer."""
    train = LazyConfig.load(REPO / "configs" / "common" / "train.py", keys="train")
    return DictConfig({
        "train": train,
        "model": L(torch.nn.Linear)(in_features=4, out_features=2),
        "optimizer": L(torch.optim.AdamW)(params=None, lr=1e-3, weight_decay=0),
        "extra": {"steps": 3, "names": ["a", "b"], "unset": None, "scales": [0.5, 1.0]},
    }, flags={"allow_objects": True})


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def restore_train_schema():
    saved = dict(train_schema.TRAIN_KEYS)
    yield
    train_schema.TRAIN_KEYS.clear()
    train_schema.TRAIN_KEYS.update(saved)


# ------------------------------------------------------------------ booleans
@pytest.mark.parametrize("text", ["off", "no", "false", "False", "OFF", "0"])
def test_bool_override_off_is_false(text):
    cfg = _config()
    cfg.train.ema.enabled = True
    LazyConfig.apply_overrides(cfg, [f"train.ema.enabled={text}"])
    assert cfg.train.ema.enabled is False


@pytest.mark.parametrize("text", ["yes", "on", "true", "True", "YES", "1"])
def test_bool_override_yes_is_true(text):
    cfg = _config()
    LazyConfig.apply_overrides(cfg, [f"train.amp.enabled={text}"])
    assert cfg.train.amp.enabled is True


def test_bool_override_refuses_other_text_naming_key_value_and_type():
    cfg = _config()
    with pytest.raises(ConfigValueError) as info:
        LazyConfig.apply_overrides(cfg, ["train.amp.enabled=maybe"])
    message = str(info.value)
    assert "train.amp.enabled" in message and "'maybe'" in message and "boolean" in message
    assert cfg.train.amp.enabled is False
    with pytest.raises(ConfigValueError, match="train.amp.enabled"):
        LazyConfig.apply_overrides(cfg, ["train.amp.enabled=2"])


# ------------------------------------------------------------------ numbers and strings
def test_int_override_refuses_2_5_naming_key_and_type():
    cfg = _config()
    with pytest.raises(ConfigValueError) as info:
        LazyConfig.apply_overrides(cfg, ["train.max_iter=2.5"])
    assert isinstance(info.value, ConfigFileError), "the CLI exits 2 on ConfigFileError"
    message = str(info.value)
    assert "train.max_iter" in message and "2.5" in message and "integer" in message
    assert cfg.train.max_iter == 90000


def test_int_override_refuses_abc():
    cfg = _config()
    with pytest.raises(ConfigValueError, match=r"train\.max_iter='abc'.*expected an integer"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter=abc"])
    with pytest.raises(ConfigValueError, match="train.max_iter"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter=true"])


def test_int_override_accepts_an_integral_float_as_int():
    cfg = _config()
    LazyConfig.apply_overrides(cfg, ["train.max_iter=1e4"])
    assert cfg.train.max_iter == 10000 and type(cfg.train.max_iter) is int


def test_float_override_accepts_int_and_stores_a_float():
    cfg = _config()
    LazyConfig.apply_overrides(cfg, ["train.ema.decay=1", "train.clip_grad=3"])
    assert cfg.train.ema.decay == 1.0 and type(cfg.train.ema.decay) is float
    assert cfg.train.clip_grad == 3.0 and type(cfg.train.clip_grad) is float
    with pytest.raises(ConfigValueError, match=r"train\.ema\.decay.*number"):
        LazyConfig.apply_overrides(cfg, ["train.ema.decay=high"])


def test_string_override_keeps_the_text_as_written():
    cfg = _config()
    LazyConfig.apply_overrides(cfg, ["train.amp.dtype=16", "train.output_dir=007", "extra.names=[x, 'y z']"])
    assert cfg.train.amp.dtype == "16"
    assert cfg.train.output_dir == "007", "a number-like text for a string key keeps its digits"
    assert list(cfg.extra.names) == ["x", "y z"]
    with pytest.raises(ConfigValueError, match="train.amp.dtype"):
        LazyConfig.apply_overrides(cfg, ["train.amp.dtype=[1, 2]"])


def test_target_argument_annotation_decides_the_type():
    cfg = _config()
    # the config writes weight_decay=0 but AdamW annotates it as float: 0.05 is valid
    LazyConfig.apply_overrides(cfg, ["optimizer.weight_decay=0.05", "model.out_features=3"])
    assert cfg.optimizer.weight_decay == pytest.approx(0.05)
    with pytest.raises(ConfigValueError, match=r"model\.out_features=2\.5.*integer"):
        LazyConfig.apply_overrides(cfg, ["model.out_features=2.5"])


def test_key_without_annotation_takes_the_type_of_its_value_with_a_hint():
    cfg = _config()
    LazyConfig.apply_overrides(cfg, ["extra.steps=5", "extra.scales=[1, 2.5]"])
    assert cfg.extra.steps == 5 and list(cfg.extra.scales) == [1.0, 2.5]
    with pytest.raises(ConfigValueError, match=r"extra\.steps.*write it as 5\.0 in the config"):
        LazyConfig.apply_overrides(cfg, ["extra.steps=0.5"])
    with pytest.raises(ConfigValueError, match=r"extra\.scales.*list of a number"):
        LazyConfig.apply_overrides(cfg, ["extra.scales=[1, abc]"])


def test_none_valued_key_accepts_any_parsable_value_and_null_sets_optional_keys():
    cfg = _config()
    LazyConfig.apply_overrides(cfg, ["extra.unset=[1, 2]", "train.clip_grad=null", "train.seed=None",
                                     "train.deepspeed={zero_optimization: {stage: 2}}"])
    assert list(cfg.extra.unset) == [1, 2]
    assert cfg.train.clip_grad is None and cfg.train.seed is None
    assert cfg.train.deepspeed.zero_optimization.stage == 2
    with pytest.raises(ConfigValueError, match=r"train\.max_iter=None.*integer"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter=null"])


# ------------------------------------------------------------------ dicts and lists
def test_hydra_dict_override_becomes_dict():
    cfg = _config()
    LazyConfig.apply_overrides(cfg, ["train.ema={enabled:true,decay:0.5}"])
    assert cfg.train.ema.enabled is True
    assert cfg.train.ema.decay == 0.5
    assert isinstance(cfg.train.ema, DictConfig)


def test_dict_override_merges_and_checks_each_key():
    cfg = _config()
    LazyConfig.apply_overrides(cfg, ["train.amp={enabled: on}"])
    assert cfg.train.amp.enabled is True and cfg.train.amp.dtype == "bfloat16", "merged, not replaced"
    with pytest.raises(UnknownConfigKeyError, match=r"'train\.ema\.enable'.*train\.ema\.enabled"):
        LazyConfig.apply_overrides(cfg, ["train.ema={enable: true}"])
    with pytest.raises(ConfigValueError, match=r"train\.ema\.decay"):
        LazyConfig.apply_overrides(cfg, ["train.ema={decay: fast}"])
    with pytest.raises(ConfigValueError, match=r"train\.ema=5.*mapping"):
        LazyConfig.apply_overrides(cfg, ["train.ema=5"])


def test_dict_override_with_a_target_replaces_the_node():
    cfg = _config()
    LazyConfig.apply_overrides(cfg, ["optimizer={_target_: torch.optim.SGD, params: null, lr: 0.5}"])
    assert set(cfg.optimizer.keys()) == {"_target_", "params", "lr"}
    opt = instantiate({**cfg.optimizer, "params": [torch.nn.Parameter(torch.zeros(1))]})
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.5


def test_list_override_replaces_the_list():
    cfg = _config()
    LazyConfig.apply_overrides(cfg, ["extra.names=[c]"])
    assert list(cfg.extra.names) == ["c"]


def test_sweeps_and_deletions_are_refused():
    cfg = _config()
    with pytest.raises(ConfigFileError, match="sweep"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter=1,2"])
    with pytest.raises(ConfigFileError, match="not supported"):
        LazyConfig.apply_overrides(cfg, ["~train.seed=0"])
    with pytest.raises(ConfigFileError, match="cannot parse override 'extra.steps=\\(1'"):
        LazyConfig.apply_overrides(cfg, ["extra.steps=(1"])


# ------------------------------------------------------------------ unknown keys
def test_added_train_key_is_refused_unless_a_project_registers_it(restore_train_schema):
    cfg = _config()
    with pytest.raises(UnknownConfigKeyError, match=r"'train\.warmup_iters'.*register_train_keys"):
        LazyConfig.apply_overrides(cfg, ["+train.warmup_iters=10"])
    cfg = _config()
    register_train_keys({"detection.mask_on": bool}, warmup_iters=int)
    LazyConfig.apply_overrides(cfg, ["+train.warmup_iters=10", "+train.detection={mask_on: true}"])
    assert cfg.train.warmup_iters == 10 and cfg.train.detection.mask_on is True
    with pytest.raises(ConfigValueError, match=r"train\.detection\.mask_on"):
        LazyConfig.apply_overrides(cfg, ["train.detection.mask_on=perhaps"])
    with pytest.raises(ValueError, match="already declared"):
        register_train_keys(max_iter=float)


def test_added_argument_that_the_target_does_not_take_is_refused():
    cfg = _config()
    with pytest.raises(UnknownConfigKeyError, match=r"'model\.bais'.*model\.bias"):
        LazyConfig.apply_overrides(cfg, ["+model.bais=false"])


def test_unknown_key_in_yaml_is_refused_with_closest_names(tmp_path):
    cfg = _config()
    path = LazyConfig.save(cfg, tmp_path / "config.yaml")
    text = path.read_text().replace("  max_iter: 90000", "  max_itr: 5")
    path.write_text(text)
    with pytest.raises(UnknownConfigKeyError) as info:
        LazyConfig.load(path)
    message = str(info.value)
    assert "'train.max_itr'" in message and str(path) in message
    assert "train.max_iter" in info.value.suggestions


def test_unknown_ddp_argument_in_yaml_is_refused(tmp_path):
    cfg = _config()
    cfg.train.ddp.find_unused_params = True
    path = LazyConfig.save(cfg, tmp_path / "config.yaml")
    with pytest.raises(UnknownConfigKeyError, match=r"train\.ddp\.find_unused_parameters"):
        LazyConfig.load(path)


def test_unknown_target_argument_in_python_config_is_refused(tmp_path):
    recipe = _write(tmp_path / "recipe.py", """
        import torch
        from eva_core.config import LazyCall as L
        model = L(torch.nn.Sequential)(_args_=[L(torch.nn.Linear)(in_features=4, out_feature=2)])
    """)
    with pytest.raises(UnknownConfigKeyError) as info:
        LazyConfig.load(recipe)
    message = str(info.value)
    assert "'model._args_.0.out_feature'" in message and str(recipe) in message
    assert "model._args_.0.out_features" in info.value.suggestions
    assert "torch.nn.modules.linear.Linear has no argument 'out_feature'" in message


def test_target_taking_kwargs_accepts_any_key(tmp_path):
    recipe = _write(tmp_path / "recipe.py", """
        from eva_core.config import LazyCall as L
        model = L(dict)(anything=1, goes=2)
    """)
    assert instantiate(LazyConfig.load(recipe).model) == {"anything": 1, "goes": 2}


def test_mistyped_train_value_in_yaml_is_refused_like_the_override(tmp_path):
    path = _write(tmp_path / "config.yaml", "train:\n  max_iter: 2.5\n")
    with pytest.raises(ConfigValueError, match=r"train\.max_iter=2\.5.*config\.yaml.*integer"):
        LazyConfig.load(path)
    path = _write(tmp_path / "config.yaml", "train:\n  ema: 0.5\n")
    with pytest.raises(ConfigValueError, match=r"train\.ema=0\.5.*mapping"):
        LazyConfig.load(path)


def test_train_values_in_files_are_read_correctly(tmp_path):
    path = _write(tmp_path / "config.yaml", """
        train:
          amp: {enabled: "off"}
          ema: {enabled: "yes", decay: 1}
          clip_grad: 3
    """)
    train = LazyConfig.load(path).train
    assert train.amp.enabled is False and train.ema.enabled is True
    assert type(train.ema.decay) is float and type(train.clip_grad) is float


# ------------------------------------------------------------------ the schema itself
def test_every_recipe_loads_and_passes_the_checks():
    recipes = sorted((REPO / "configs").rglob("*.py"))
    assert recipes
    for recipe in recipes:
        LazyConfig.load(recipe)


def test_train_schema_declares_every_train_key_the_engine_reads():
    sources = sorted((REPO / "eva_core" / "eva_core" / "engine").glob("*.py"))
    sources += sorted((REPO / "tools").glob("*.py"))
    patterns = [r'"train\.([a-z_]+(?:\.[a-z_]+)*)"',  # select(cfg, "train.max_iter")
                r'train\.get\("([a-z_]+)"',  # cfg.train.get("seed")
                r'train_setting\(\w+, "([a-z_.]+)"',  # train_setting(cfg, "amp.enabled")
                r'cfg\.train\.([a-z_]+(?:\.[a-z_]+)*)\b(?!\s*\()']  # cfg.train.output_dir
    read = set()
    for source in sources:
        text = source.read_text()
        for pattern in patterns:
            read |= set(re.findall(pattern, text))
    assert {"max_iter", "amp.enabled", "ema.decay", "seed", "deterministic"} <= read
    missing = sorted(k for k in read if train_schema.train_key_type(k) is None)
    assert not missing, f"keys the engine reads but train_schema.py does not declare: {missing}"
    defaults = LazyConfig.load(REPO / "configs" / "common" / "train.py", keys="train")
    assert defaults.max_iter == 90000  # loading ran the check on every default key


def test_null_override_is_accepted_for_an_argument_that_defaults_to_none():
    cfg = LazyConfig.load(str(REPO / "configs" / "pretrain" / "toy.py"))
    LazyConfig.apply_overrides(cfg, ["model.teacher.checkpoint=null"])
    assert cfg.model.teacher.checkpoint is None
    with pytest.raises(ConfigValueError, match="model.teacher.precision"):
        LazyConfig.apply_overrides(cfg, ["model.teacher.precision=null"])  # its default is not None
