"""LazyConfig: LazyCall nodes, recursive instantiate, python/yaml loading, saving, overrides."""
import functools
import textwrap

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from eva_core.config import (
    ConfigFileError,
    ConfigValueError,
    L,
    LazyCall,
    LazyConfig,
    UnknownConfigKeyError,
    instantiate,
    locate,
)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _make_config_tree(root):
    """configs/common/{train,optim}.py and configs/task/recipe.py importing them relatively."""
    _write(root / "common" / "train.py", """
        train = dict(output_dir="./output", max_iter=100, seed=0,
                     amp=dict(enabled=False, dtype="bfloat16"), log_period=20)
    """)
    _write(root / "common" / "optim.py", """
        import torch
        from eva_core.config import LazyCall as L
        SGD = L(torch.optim.SGD)(params=None, lr=0.1, momentum=0.9)
    """)
    return _write(root / "task" / "recipe.py", """
        import torch
        from eva_core.config import LazyCall as L
        from ..common.train import train
        from ..common.optim import SGD as optimizer
        from ..common import train as train_module

        train.max_iter = 7
        model = L(torch.nn.Sequential)(_args_=[
            L(torch.nn.Linear)(in_features=4, out_features=8),
            L(torch.nn.ReLU)(),
            L(torch.nn.Linear)(in_features=8, out_features=2),
        ])
        untouched_train = train_module.train
        _private = dict(a=1)
        learning_rates = [0.1, 0.01]
    """)


def test_lazycall_stores_importable_dotted_target_and_kwargs():
    node = L(torch.nn.Linear)(in_features=3, out_features=5)
    assert isinstance(node, DictConfig)
    assert node._target_ == "torch.nn.modules.linear.Linear"
    assert node.in_features == 3 and node.out_features == 5
    assert LazyCall is L


def test_lazycall_keeps_non_importable_callable_as_object():
    def local_factory(x):
        return x * 2

    node = L(local_factory)(x=21)
    assert node._target_ is local_factory
    assert instantiate(node) == 42


def test_instantiate_builds_nested_nodes_and_lists_bottom_up():
    cfg = L(torch.nn.Sequential)(_args_=[
        L(torch.nn.Linear)(in_features=4, out_features=3),
        L(torch.nn.Tanh)(),
    ])
    cfg_dict = dict(net=cfg, plain=dict(opt=L(dict)(lr=0.5), nums=[1, 2]))
    built = instantiate(cfg_dict)
    net = built["net"]
    assert isinstance(net, torch.nn.Sequential)
    assert isinstance(net[0], torch.nn.Linear) and net[0].out_features == 3
    assert isinstance(net[1], torch.nn.Tanh)
    assert built["plain"] == {"opt": {"lr": 0.5}, "nums": [1, 2]}


def test_instantiate_passes_live_objects_through_without_copying():
    model = torch.nn.Linear(2, 2)
    cfg = L(torch.optim.SGD)(params=L(list)(), lr=0.1)
    cfg.params = L(_params_of)(model=None)
    cfg.params.model = model  # what the engine does with optimizer.params.model
    opt = instantiate(cfg)
    assert opt.param_groups[0]["params"][0] is model.weight
    assert instantiate(model) is model
    assert instantiate(3.5) == 3.5


def _params_of(model):
    return list(model.parameters())


def test_instantiate_error_names_the_target():
    with pytest.raises(TypeError, match="torch.nn.modules.linear.Linear"):
        instantiate(L(torch.nn.Linear)(in_features=2, bogus=1))
    with pytest.raises(ImportError, match="no.such.module"):
        instantiate({"_target_": "no.such.module.thing"})


def test_load_python_config_follows_relative_imports(tmp_path):
    recipe = _make_config_tree(tmp_path)
    cfg = LazyConfig.load(recipe)
    assert set(cfg.keys()) == {"train", "optimizer", "model", "untouched_train", "learning_rates"}
    assert cfg.train.max_iter == 7
    assert cfg.untouched_train.max_iter == 100, "each import must get its own copy"
    assert cfg.optimizer.lr == 0.1
    model = instantiate(cfg.model)
    assert model(torch.zeros(5, 4)).shape == (5, 2)


def test_load_selects_keys(tmp_path):
    recipe = _make_config_tree(tmp_path)
    train = LazyConfig.load(recipe, keys="train")
    assert train.seed == 0
    train, optimizer = LazyConfig.load(recipe, keys=("train", "optimizer"))
    assert optimizer.momentum == 0.9
    with pytest.raises(ConfigFileError, match="nope"):
        LazyConfig.load(recipe, keys="nope")


def test_load_reports_missing_file_and_broken_relative_import(tmp_path):
    with pytest.raises(ConfigFileError, match="missing.py"):
        LazyConfig.load(tmp_path / "missing.py")
    bad = _write(tmp_path / "task" / "bad.py", "from ..common.nothing import train\n")
    with pytest.raises(ImportError, match="nothing"):
        LazyConfig.load(bad)


def test_save_then_load_yaml_gives_equal_config_that_instantiates(tmp_path):
    cfg = LazyConfig.load(_make_config_tree(tmp_path))
    out = LazyConfig.save(cfg, tmp_path / "out" / "config.yaml")
    again = LazyConfig.load(out)
    assert again == cfg
    assert isinstance(instantiate(again.model), torch.nn.Sequential)


def test_save_warns_about_unserializable_values_instead_of_crashing(tmp_path):
    def local_fn(x):
        return x

    # dict takes **kwargs: the extra keys below are legal arguments, so the file loads again
    cfg = DictConfig({"optimizer": L(dict)(params=None, lr=0.1)}, flags={"allow_objects": True})
    cfg.optimizer.params = torch.nn.Linear(2, 2)
    cfg.optimizer.fn = lambda x: x
    cfg.optimizer.local = functools.partial(local_fn, 1)
    cfg.optimizer.module = torch.nn.functional
    cfg.optimizer.ok = F.gelu
    with pytest.warns(UserWarning) as record:
        path = LazyConfig.save(cfg, tmp_path / "c.yaml")
    message = str(record[0].message)
    for key in ("optimizer.params", "optimizer.fn", "optimizer.local", "optimizer.module"):
        assert key in message
    assert "optimizer.ok" not in message, "an importable function must not be reported"
    again = LazyConfig.load(path)
    assert again.optimizer.lr == 0.1
    assert again.optimizer.params.startswith("<unserializable Linear")


def _norm_layer_config():
    return DictConfig({"block": L(dict)(
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        activation=F.gelu,
        act_layer=torch.nn.GELU,
        collate_fn=_params_of,
        head=functools.partial(torch.nn.Linear, 8, out_features=3, bias=False),
        nested=[functools.partial(torch.nn.Dropout, p=0.25)],
    )}, flags={"allow_objects": True})


def test_save_load_rebuilds_importable_functions_classes_and_partials(tmp_path, recwarn):
    path = LazyConfig.save(_norm_layer_config(), tmp_path / "config.yaml")
    assert not [w for w in recwarn if "unserializable" in str(w.message)]
    assert "<unserializable" not in path.read_text()
    block = instantiate(LazyConfig.load(path).block)
    assert block["activation"] is F.gelu
    assert block["act_layer"] is torch.nn.GELU
    assert block["collate_fn"] is _params_of
    norm = block["norm_layer"](16)
    assert isinstance(norm, torch.nn.LayerNorm)
    assert norm.eps == 1e-6 and norm.normalized_shape == (16,)
    head = block["head"]
    assert isinstance(head, functools.partial) and head.func is torch.nn.Linear
    assert head.args == (8,) and head.keywords == {"out_features": 3, "bias": False}
    assert head().bias is None and head().weight.shape == (3, 8)
    assert block["nested"][0]().p == 0.25


def test_saved_function_node_is_a_readable_locate_call(tmp_path):
    text = LazyConfig.dump(DictConfig({"act": torch.nn.GELU}, flags={"allow_objects": True}))
    assert "_target_: eva_core.config.locate" in text
    assert "name: torch.nn.modules.activation.GELU" in text


def test_locate_imports_dotted_names_and_names_what_is_missing():
    assert locate("torch.nn.Linear") is torch.nn.Linear
    assert locate("torch.nn.Linear.forward") is torch.nn.Linear.forward
    assert locate("eva_core.config.locate") is locate
    with pytest.raises(ImportError, match="'torch.nn' has no attribute 'NoSuchLayer'"):
        locate("torch.nn.NoSuchLayer")
    with pytest.raises(ImportError, match="no_such_package"):
        locate("no_such_package.thing")
    with pytest.raises(ImportError, match="dotted name"):
        locate("torch..nn")


def test_overrides_parse_hydra_values_and_keep_text_as_strings(tmp_path):
    cfg = LazyConfig.load(_make_config_tree(tmp_path))
    LazyConfig.apply_overrides(cfg, [
        "train.max_iter=250", "optimizer.lr=3e-4", "train.amp.enabled=True",
        "train.output_dir=/tmp/run 1", "train.seed=None", "learning_rates=[1, 2.5]",
        "train.amp.dtype=float16", "+new_key=[1, 2]",
    ])
    assert cfg.train.max_iter == 250 and isinstance(cfg.train.max_iter, int)
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.train.amp.enabled is True
    assert cfg.train.output_dir == "/tmp/run 1"
    assert cfg.train.seed is None
    assert list(cfg.learning_rates) == [1, 2.5]
    assert cfg.train.amp.dtype == "float16"
    assert list(cfg.new_key) == [1, 2]
    # typed overrides: an integer key no longer takes a boolean (it used to store False)
    with pytest.raises(ConfigValueError, match="train.log_period"):
        LazyConfig.apply_overrides(cfg, ["train.log_period=false"])
    assert cfg.train.log_period == 20


def test_unknown_override_key_names_key_and_closest_existing_keys(tmp_path):
    cfg = LazyConfig.load(_make_config_tree(tmp_path))
    with pytest.raises(UnknownConfigKeyError) as info:
        LazyConfig.apply_overrides(cfg, ["train.max_iters=5"])
    message = str(info.value)
    assert "'train.max_iters'" in message
    assert "train.max_iter" in info.value.suggestions
    assert "train.max_iter" in message
    with pytest.raises(UnknownConfigKeyError, match="train.amp.enabled"):
        LazyConfig.apply_overrides(cfg, ["train.amp.enabeld=1"])
    assert cfg.train.max_iter == 7, "a failed override must not change the config"


def test_override_sets_key_whose_value_is_missing(tmp_path):
    cfg = DictConfig({"a": "???", "train": {"output_dir": "???", "max_iter": 3}, "lst": ["???"]})
    LazyConfig.apply_overrides(cfg, ["a=1", "train.output_dir=/tmp/run", "lst.0=5"])
    assert cfg.a == 1 and cfg.train.output_dir == "/tmp/run" and list(cfg.lst) == [5]
    with pytest.raises(UnknownConfigKeyError, match="'train.output'"):
        LazyConfig.apply_overrides(cfg, ["train.output=1"])
    with pytest.raises(UnknownConfigKeyError, match="'lst.1'"):
        LazyConfig.apply_overrides(cfg, ["lst.1=1"])


def test_malformed_override_is_a_clear_error(tmp_path):
    cfg = LazyConfig.load(_make_config_tree(tmp_path))
    with pytest.raises(ConfigFileError, match="key=value"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter"])
