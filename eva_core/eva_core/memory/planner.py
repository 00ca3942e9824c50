"""Peak training memory per GPU of a LazyConfig, estimated without a GPU and without allocating.

The config's model is built on the meta device (no weights are read), moved to fake tensors
(``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and strides, no data) and put
through one real training step: forward (under the config's autocast), backward, gradient
clipping and the optimizer step. A ``TorchDispatchMode`` sees every tensor an op creates and a
weak reference on its storage sees it die, so the sum of live storage bytes is followed op by op,
split by what the bytes are (activations, gradients, optimizer state, ...). Sharding (ZeRO over
``num_gpus``) divides the categories that are sharded, and the peak of the weighted sum over the
step is the estimate.

What is counted: every tensor autograd, autocast (its cast-weight cache), the model and the
optimizer really create, at the sizes they create them, on the code path the config runs. What is
not: the CUDA context and kernels' workspaces (about 0.5-2 GiB on a GPU), allocator fragmentation
and NCCL buffers other than the gradient buckets listed below. Autocast is simulated with torch's
CPU autocast, whose op lists follow CUDA's for the ops a ViT uses (matmul/linear/conv/SDPA in low
precision, LayerNorm/softmax/losses in fp32).

Usage::

    cfg = LazyConfig.load("configs/pretrain/eva_g_merged30m.py")
    report = estimate_training_memory(cfg, num_gpus=128)
    print(report.format_table(gpu_mem_gib=40))
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import importlib.util
import sys
import weakref
from collections import Counter
from typing import Any, Callable, Mapping

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = [
    "TrainingSetup", "MemoryReport", "Suggestion", "read_training_setup", "estimate_training_memory",
    "suggest_fixes", "format_suggestions", "register_example_batch", "example_batch", "build_meta_model",
    "checkpointing_overrides", "StorageTracker", "GiB", "register_planning_context", "planning_context",
    "real_mode", "register_inference_batch", "inference_batch", "estimate_inference_memory",
    "InferenceReport",
]

GiB = 1024 ** 3

#: Keys naming weight files in model configs, with the value that clears them. Weights do not change
#: the memory of a step, and the files need not exist where the estimate runs, so they are cleared
#: before the meta build -- but only where the value IS a weight file (a path string) or a download
#: switch (``pretrained=True``): ``Box2BoxTransform(weights=(10, 10, 5, 5))`` holds numbers, not a
#: file, and keeps them.
_WEIGHT_KEYS = {"checkpoint_path": None, "checkpoint": None, "weights": None, "pretrained": False}


def _is_weight_file_value(key: str, value: Any) -> bool:
    if key == "pretrained":
        return value is True or isinstance(value, str)
    return isinstance(value, str)

#: Table rows, in print order, with the text shown for each category.
CATEGORIES = {
    "params": "parameters (trained)",
    "master": "fp32 master weights",
    "gradients": "gradients",
    "states": "optimizer states",
    "step_temp": "optimizer-step temporaries",
    "frozen": "frozen parameters + buffers",
    "ema": "EMA weights",
    "comm": "gradient communication buckets",
    "input": "input batch",
    "activations": "activations (saved + transient)",
}

# DeepSpeed defaults (deepspeed.runtime.zero.config) used when the config does not set them
_DS_REDUCE_BUCKET = int(5e8)
_DS_PREFETCH_BUCKET = int(5e7)


# ---------------------------------------------------------------------------------------- setup
@dataclasses.dataclass
class TrainingSetup:
    """What a config asks of one GPU in one training step.

    Attributes:
        num_gpus: data-parallel ranks.
        batch_per_gpu: images per forward pass on one GPU
            (``dataloader.train.total_batch_size / num_gpus``).
        grad_accum_steps: forward/backward passes per optimizer step.
        amp_dtype: autocast dtype of the torch engine (``None``: fp32 or DeepSpeed's own precision).
        engine: ``"torch"`` (DDP, optional ZeroRedundancyOptimizer) or ``"deepspeed"``.
        zero_stage: 0-1 (torch) or 0-3 (DeepSpeed).
        param_dtype: dtype the model's weights are kept in (DeepSpeed fp16/bf16: half precision,
            with fp32 master weights in the optimizer).
        clip_grad: max gradient norm or ``None``.
        ema: an EMA copy of the model is kept.
        ddp_bucket_view: DDP's ``gradient_as_bucket_view`` (no separate bucket copy of the gradients).
        ds_reduce_bucket / ds_prefetch_bucket: DeepSpeed bucket sizes in elements.
    """

    num_gpus: int
    batch_per_gpu: int
    grad_accum_steps: int = 1
    amp_dtype: torch.dtype | None = None
    engine: str = "torch"
    zero_stage: int = 0
    param_dtype: torch.dtype = torch.float32
    clip_grad: float | None = None
    ema: bool = False
    ddp_bucket_view: bool = False
    ds_reduce_bucket: int = _DS_REDUCE_BUCKET
    ds_prefetch_bucket: int = _DS_PREFETCH_BUCKET

    @property
    def precision(self) -> str:
        if self.engine == "deepspeed" and self.param_dtype != torch.float32:
            return f"DeepSpeed {_dtype_name(self.param_dtype)} weights"
        return f"autocast {_dtype_name(self.amp_dtype)}" if self.amp_dtype is not None else "fp32"


def _dtype_name(dtype: torch.dtype | None) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))


def _select(cfg: Any, key: str, default: Any = None) -> Any:
    value = OmegaConf.select(cfg, key, default=default)
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _amp_dtype(name: Any) -> torch.dtype:
    names = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    try:
        return names[str(name).lower()]
    except KeyError:
        raise ValueError(f"train.amp.dtype={name!r}: expected one of 'float16', 'bfloat16'") from None


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}={value!r}: expected a positive integer")
    return value


def read_training_setup(cfg: Any, num_gpus: int = 1) -> TrainingSetup:
    """Read batch size, precision, engine and sharding of one training step from a config.

    The per-GPU batch is ``dataloader.train.total_batch_size / num_gpus`` (``total_batch_size`` is
    summed over GPUs; ``train.grad_accum_steps`` micro-batches make one optimizer step).

    Raises:
        ValueError: a missing or invalid key (the message names it and what was expected), or a
            total batch that ``num_gpus`` does not divide.
    """
    num_gpus = _positive_int(num_gpus, "--num-gpus")
    total = OmegaConf.select(cfg, "dataloader.train.total_batch_size")
    if total is None:
        raise ValueError("config has no dataloader.train.total_batch_size; "
                         "the planner reads the batch from it")
    total = _positive_int(total, "dataloader.train.total_batch_size")
    if total % num_gpus:
        raise ValueError(f"dataloader.train.total_batch_size={total} is not divisible by "
                         f"--num-gpus {num_gpus}")
    accum = _positive_int(_select(cfg, "train.grad_accum_steps", 1), "train.grad_accum_steps")
    amp_enabled = _select(cfg, "train.amp.enabled", False)
    if not isinstance(amp_enabled, bool):
        raise ValueError(f"train.amp.enabled={amp_enabled!r}: expected True or False")
    amp = _amp_dtype(_select(cfg, "train.amp.dtype", "float16")) if amp_enabled else None
    clip = _select(cfg, "train.clip_grad", None)
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        raise ValueError(f"train.clip_grad={clip!r}: expected a positive number or None")
    ema = bool(_select(cfg, "train.ema.enabled", False))
    setup = TrainingSetup(num_gpus=num_gpus, batch_per_gpu=total // num_gpus, grad_accum_steps=accum,
                          amp_dtype=amp, clip_grad=clip, ema=ema,
                          ddp_bucket_view=bool(_select(cfg, "train.ddp.gradient_as_bucket_view", False)))
    ds = _select(cfg, "train.deepspeed", None)
    if ds is not None:
        if not isinstance(ds, Mapping):
            raise ValueError(f"train.deepspeed={ds!r}: expected None or a DeepSpeed config dict")
        setup.engine = "deepspeed"
        zero = ds.get("zero_optimization") or {}
        stage = zero.get("stage", 0)
        if stage not in (0, 1, 2, 3):
            raise ValueError(f"train.deepspeed.zero_optimization.stage={stage!r}: expected 0, 1, 2 or 3")
        setup.zero_stage = stage
        setup.ds_reduce_bucket = int(zero.get("reduce_bucket_size", _DS_REDUCE_BUCKET))
        setup.ds_prefetch_bucket = int(zero.get("stage3_prefetch_bucket_size", _DS_PREFETCH_BUCKET))
        if (ds.get("fp16") or {}).get("enabled"):
            setup.param_dtype = torch.float16
        elif (ds.get("bf16") or {}).get("enabled"):
            setup.param_dtype = torch.bfloat16
        elif amp is not None:
            setup.param_dtype = amp  # the engine fills fp16/bf16 from train.amp
        setup.amp_dtype = None  # DeepSpeed runs the half-precision model itself
    else:
        stage = _select(cfg, "train.zero_stage", 0) or 0
        if stage not in (0, 1):
            raise ValueError(f"train.zero_stage={stage!r}: expected 0 or 1 "
                             "(use train.deepspeed for stages 2-3)")
        setup.zero_stage = stage
    return setup


# ---------------------------------------------------------------------------------- tracking
class StorageTracker(TorchDispatchMode):
    """Follows the bytes of live tensor storages, by category, op by op.

    Every tensor an op returns is looked at; a storage seen for the first time is counted under the
    current ``category`` and a weak reference removes it when the storage is freed. Views and
    in-place results share a storage and are counted once. ``timeline`` holds the per-category
    bytes after every op that changed them.

    Boolean-mask indexing has a data-dependent output size, which fake tensors cannot know; masks
    whose number of True values is known are registered with :meth:`set_true_count` and indexing
    with them is run with integer indices of that length.
    """

    def __init__(self):
        super().__init__()
        self.category = "activations"
        self.bytes: Counter = Counter()
        self.timeline: list[tuple[tuple[str, int], ...]] = []
        self._records: dict[int, list] = {}  # storage key -> [nbytes, category, weakref]
        self._true_counts: dict[int, int] = {}
        #: data-dependent ops given their largest output size (op name -> calls): the figure is then
        #: an upper bound
        self.upper_bound_ops: Counter = Counter()
        self._producer: dict[int, Any] = {}  # storage key of a fake boolean from all()/any() -> op
        #: value reads of fake booleans answered with the healthy value (op -> calls)
        self.assumed_checks: Counter = Counter()

    @staticmethod
    def _key(storage: torch.UntypedStorage) -> int:
        return storage._cdata

    def _add(self, t: torch.Tensor, category: str) -> None:
        st = t.untyped_storage()
        key = self._key(st)
        if key in self._records:
            return
        nbytes = int(st.nbytes())

        def _freed(_ref, key=key):
            rec = self._records.pop(key, None)
            if rec is not None:
                self.bytes[rec[1]] -= rec[0]
                self._true_counts.pop(key, None)
                self._producer.pop(key, None)
                self._snapshot()

        self._records[key] = [nbytes, category, weakref.ref(st, _freed)]
        self.bytes[category] += nbytes

    def track(self, tensors: Any, category: str) -> None:
        """Count already existing tensors (parameters, inputs) under ``category``."""
        for t in tree_flatten(tensors)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t, category)
        self._snapshot()

    def reclassify(self, tensors: Any, category: str) -> None:
        """Move tensors to ``category`` (a fresh gradient becomes ``"gradients"``)."""
        for t in tree_flatten(tensors)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            self._add(t, category)
            rec = self._records[self._key(t.untyped_storage())]
            if rec[1] != category:
                self.bytes[rec[1]] -= rec[0]
                self.bytes[category] += rec[0]
                rec[1] = category
        self._snapshot()

    def set_true_count(self, mask: torch.Tensor, count: int) -> None:
        """Declare that the boolean ``mask`` (its whole storage) holds ``count`` True values."""
        self._add(mask, self.category)
        self._true_counts[self._key(mask.untyped_storage())] = int(count)

    def reset_timeline(self) -> None:
        self.timeline = []
        self._snapshot()

    def _snapshot(self) -> None:
        snap = tuple(sorted((k, v) for k, v in self.bytes.items() if v))
        if not self.timeline or self.timeline[-1] != snap:
            self.timeline.append(snap)

    def _int_indices(self, indices: list) -> list:
        """Boolean index tensors -> integer index tensors of the known (or largest) length."""
        out = []
        for idx in indices:
            if isinstance(idx, torch.Tensor) and idx.dtype == torch.bool:
                if not _is_fake(idx):
                    with real_mode():  # a real mask (from the batch): its exact indices
                        out.extend(idx.nonzero(as_tuple=True))
                    continue
                st = idx.untyped_storage()
                count = self._true_counts.get(self._key(st))
                if count is None or idx.numel() != st.nbytes():
                    # planning mode: every element selected, the largest output the data could make
                    count = idx.numel()
                    self._upper_bound("boolean-mask indexing")
                out.extend(torch.zeros(count, dtype=torch.long, device=idx.device) for _ in range(idx.ndim))
            else:
                out.append(idx)
        return out

    def _upper_bound(self, what: str) -> None:
        self.upper_bound_ops[what] += 1

    def _data_dependent(self, func, args, kwargs):
        """Output of an op whose output size depends on fake values: its largest possible size."""
        x = args[0]
        if func in (torch.ops.aten.nonzero.default,):
            self._upper_bound("nonzero")
            return torch.empty(x.numel(), x.dim(), dtype=torch.long, device=x.device)
        if func is torch.ops.aten.masked_select.default:
            self._upper_bound("masked_select")
            shape = torch.broadcast_shapes(x.shape, args[1].shape)
            return torch.empty(int(torch.Size(shape).numel()), dtype=x.dtype, device=x.device)
        if func is _TV_NMS:
            self._upper_bound("nms (every box kept)")
            return torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        # unique: every value distinct
        self._upper_bound("unique")
        flat = torch.empty(x.numel(), dtype=x.dtype, device=x.device)
        outs = [flat]
        if func is torch.ops.aten._unique2.default:
            return_inverse = args[2] if len(args) > 2 else kwargs.get("return_inverse", False)
            return_counts = args[3] if len(args) > 3 else kwargs.get("return_counts", False)
            outs.append(torch.empty(x.shape if return_inverse else 0, dtype=torch.long, device=x.device))
            outs.append(torch.empty(x.numel() if return_counts else 0, dtype=torch.long, device=x.device))
            return tuple(outs)
        outs.append(torch.empty(x.shape, dtype=torch.long, device=x.device))  # _unique (inverse)
        return tuple(outs)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if tensors and not any(_is_fake(t) for t in tensors):
            # every input is real (label maps, class ids, masks of the example batch and what is
            # computed from them alone): run it for real, so value-dependent sizes come out exact
            with real_mode():
                out = func(*args, **kwargs)
        else:
            if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default,
                        torch.ops.aten.index_put.default, torch.ops.aten._index_put_impl_.default):
                indices = args[1]
                if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices):
                    args = (args[0], self._int_indices(list(indices)), *args[2:])
            if func in _DATA_DEPENDENT:
                out = self._data_dependent(func, args, kwargs)
            elif (func is torch.ops.aten._local_scalar_dense.default and args[0].dtype == torch.bool
                    and self._producer.get(self._key(args[0].untyped_storage())) in _HEALTHY_CHECKS):
                # a sanity check of the model on its own outputs (``if not finite.all(): raise``,
                # ``if (iou < 0).any(): raise``): it passes, as in a healthy step
                producer = self._producer[self._key(args[0].untyped_storage())]
                self.assumed_checks[producer.__name__] += 1
                return _HEALTHY_CHECKS[producer]
            elif func is torch.ops.aten._local_scalar_dense.default:
                raise NotImplementedError(
                    f"the model reads the value of a {tuple(args[0].shape)} {args[0].dtype} tensor computed "
                    "from fake data (.item(), bool(), int() or a Python branch on it): the planner has no "
                    "values. Keep the values it depends on real (integer/boolean inputs of the example "
                    "batch stay real) or register a planning context (register_planning_context) that "
                    "replaces the step by its largest-size version.")
            else:
                out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t, self.category)
                if t.numel() == 1 and t.dtype == torch.bool and func in _HEALTHY_CHECKS:
                    self._producer[self._key(t.untyped_storage())] = func
        self._snapshot()
        return out


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def real_mode():
    """Leave the fake mode for a moment: tensors made inside are real (for planning contexts that
    build small real tensors, e.g. index tensors whose values decide sizes). The tracker still counts
    them."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily()


def _torchvision_nms():
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)

        return torch.ops.torchvision.nms.default
    except (ImportError, AttributeError, RuntimeError):
        return None


_TV_NMS = _torchvision_nms()
#: Boolean reductions whose value the planner assumes when the model branches on one: the healthy answer.
_HEALTHY_CHECKS = {torch.ops.aten.all.default: True, torch.ops.aten.any.default: False}
#: Ops whose output size depends on the values; on fake inputs they return their largest size.
_DATA_DEPENDENT = {torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default,
                   torch.ops.aten._unique2.default, torch.ops.aten._unique.default}
if _TV_NMS is not None:
    _DATA_DEPENDENT.add(_TV_NMS)


# ---------------------------------------------------------------------------- example batches
_BATCH_BUILDERS: list[tuple[type, Callable]] = []


def register_example_batch(model_type: type) -> Callable:
    """Register ``fn(model, cfg, batch_size) -> dict`` building one training batch for a model type.

    Floating-point inputs may be any tensor (only their shape and dtype matter: they are made
    fake); integer and boolean inputs should be real tensors with realistic values (a MIM mask with
    its real number of masked patches), because indexing with them sizes the outputs.
    """

    def deco(fn: Callable) -> Callable:
        _BATCH_BUILDERS.insert(0, (model_type, fn))
        return fn

    return deco


_INFERENCE_BUILDERS: list[tuple[type, Callable]] = []


def register_inference_batch(model_type: type) -> Callable:
    """Register ``fn(model, cfg, batch_size) -> batch`` building one evaluation batch (the test
    loader's size) for a model type; see :func:`estimate_inference_memory`."""

    def deco(fn: Callable) -> Callable:
        _INFERENCE_BUILDERS[:] = [(c, f) for c, f in _INFERENCE_BUILDERS if c is not model_type]
        _INFERENCE_BUILDERS.append((model_type, fn))
        return fn

    return deco


def inference_batch(model: torch.nn.Module, cfg: Any, batch_size: int) -> Any:
    """One evaluation batch of ``batch_size`` for ``model`` (see :func:`register_inference_batch`).

    Raises:
        TypeError: no builder is registered for the model's type.
    """
    _import_package_hooks(model)
    for cls, fn in _INFERENCE_BUILDERS:
        if isinstance(model, cls):
            return fn(model, cfg, batch_size)
    raise TypeError(f"the memory planner has no evaluation batch for {type(model).__name__}; register one "
                    "with eva_core.memory.register_inference_batch")


_PLANNING_CONTEXTS: list[tuple[type, Callable]] = []


def register_planning_context(model_type: type) -> Callable:
    """Register ``fn(model, cfg) -> context manager`` active around the simulated forward pass.

    For steps that read values the fake tensors do not have (a Hungarian matching in scipy, a
    Python branch on a tensor): the context swaps them for a version whose output sizes are the
    real ones (or their maximum) without reading values. The model's own package registers it on
    import; eva_core imports no task package.
    """

    def deco(fn: Callable) -> Callable:
        _PLANNING_CONTEXTS[:] = [(c, f) for c, f in _PLANNING_CONTEXTS if c is not model_type]
        _PLANNING_CONTEXTS.append((model_type, fn))
        return fn

    return deco


class planning_context(contextlib.ExitStack):
    """Every registered planning context that applies to ``model`` (see :func:`register_planning_context`)."""

    def __init__(self, model: torch.nn.Module, cfg: Any):
        super().__init__()
        self._contexts = [fn for cls, fn in _PLANNING_CONTEXTS if isinstance(model, cls)]
        self._model, self._cfg = model, cfg

    def __enter__(self):
        super().__enter__()
        for fn in self._contexts:
            self.enter_context(fn(self._model, self._cfg))
        return self


def _find_key(node: Any, key: str) -> Any:
    """The first value of ``key`` anywhere under a config node (depth first), or None."""
    if isinstance(node, DictConfig):
        if key in node and not OmegaConf.is_missing(node, key):
            return node[key]
        children = [node._get_node(k) for k in node.keys()]
    elif isinstance(node, ListConfig):
        children = [node._get_node(i) for i in range(len(node))]
    else:
        return None
    for child in children:
        found = _find_key(child, key)
        if found is not None:
            return found
    return None


def _image_size(cfg: Any, net: torch.nn.Module) -> tuple[int, int]:
    """Training crop size: the train transform's ``img_size``, else the model's native size."""
    size = _find_key(OmegaConf.select(cfg, "dataloader.train"), "img_size")
    if size is None:
        size = getattr(getattr(net, "patch_embed", None), "img_size", None)
    if size is None:
        raise ValueError("cannot tell the training image size: no dataloader.train...img_size in the config "
                         "and the model has no patch_embed.img_size")
    if isinstance(size, (list, tuple, ListConfig)):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def _mim_batch(model: torch.nn.Module, cfg: Any, batch_size: int) -> dict:
    h, w = _image_size(cfg, model.encoder)
    ph, pw = model.encoder.patch_embed.patch_size
    n = (h // ph) * (w // pw)
    k = _find_key(OmegaConf.select(cfg, "dataloader.train"), "num_masking_patches")
    k = int(k) if k is not None else int(round(0.4 * n))
    mask = torch.zeros(batch_size, n, dtype=torch.bool)
    mask[:, :k] = True  # only the count matters: it sizes the masked-token tensors
    return {"image": torch.empty(batch_size, 3, h, w), "mask": mask}


def _classification_batch(model: torch.nn.Module, cfg: Any, batch_size: int) -> dict:
    h, w = _image_size(cfg, model.net)
    return {"image": torch.empty(batch_size, 3, h, w), "label": torch.zeros(batch_size, dtype=torch.long)}


def _builtin_builders() -> None:
    from eva_core.classification import ImageClassifier
    from eva_core.mim import EvaMIM

    for cls, fn in ((EvaMIM, _mim_batch), (ImageClassifier, _classification_batch)):
        if not any(c is cls for c, _ in _BATCH_BUILDERS):
            _BATCH_BUILDERS.append((cls, fn))


def _import_package_hooks(model: torch.nn.Module) -> None:
    """Import ``<package>.memory`` of the model's top-level package when it has one.

    The convention by which task packages (``vitdet_eva``, ``mask2former_eva``, ``video``) register
    their example batches and planning contexts without eva_core naming them: the registration runs
    on import of that module, whether the package's ``__init__`` imports it or not.
    """
    package = type(model).__module__.split(".")[0]
    name = f"{package}.memory"
    if package in ("eva_core", "__main__") or name in sys.modules:
        return
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a package without a spec (defined in a script, a test module)
        return
    if found:
        importlib.import_module(name)


def example_batch(model: torch.nn.Module, cfg: Any, batch_size: int) -> Any:
    """One training batch of ``batch_size`` for ``model`` (see :func:`register_example_batch`).

    Raises:
        TypeError: no builder is registered for the model's type.
    """
    _builtin_builders()
    _import_package_hooks(model)
    for cls, fn in _BATCH_BUILDERS:
        if isinstance(model, cls):
            return fn(model, cfg, batch_size)
    raise TypeError(f"the memory planner has no example batch for {type(model).__name__}; register one with "
                    "eva_core.memory.register_example_batch")


# ------------------------------------------------------------------------------- fake model
def _clear_weight_files(node: Any) -> None:
    if isinstance(node, DictConfig):
        for k in list(node.keys()):
            if ("_target_" in node and k in _WEIGHT_KEYS and not OmegaConf.is_missing(node, k)
                    and _is_weight_file_value(k, node[k])):
                node[k] = _WEIGHT_KEYS[k]
            else:
                _clear_weight_files(node._get_node(k))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            _clear_weight_files(node._get_node(i))


def build_meta_model(model_cfg: Any) -> torch.nn.Module:
    """Instantiate a model config on the meta device, with its weight-file keys cleared."""
    from eva_core.config import instantiate

    model_cfg = copy.deepcopy(model_cfg)
    _clear_weight_files(model_cfg)
    with torch.device("meta"):
        return instantiate(model_cfg)


def _materialize_fake(model: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
    """Replace meta parameters and buffers by fake CPU tensors (call inside the FakeTensorMode)."""

    def fake(t: torch.Tensor) -> torch.Tensor:
        out_dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
        return torch.empty_strided(t.size(), t.stride(), dtype=out_dtype, device="cpu")

    model._apply(fake)


# ----------------------------------------------------------------------------------- estimate
def _format_rows(lines: list, labels: dict, breakdown: dict, peak_bytes: int, upper_bound_ops: dict,
                 smaller: str, gpu_mem_gib: float | None) -> str:
    """The report table under its header ``lines``: one row per non-empty category, the peak, the
    upper-bound note (``smaller``: what a real run keeps less of) and the fit verdict."""
    for cat, label in labels.items():
        if breakdown.get(cat):
            b = breakdown[cat]
            lines.append(f"{label:<36}{b / 2**20:>12.1f}{b / GiB:>10.3f}")
    peak_gib = peak_bytes / GiB
    lines.append(f"{'peak per GPU':<36}{peak_bytes / 2**20:>12.1f}{peak_gib:>10.3f}"
                 f"  ({peak_bytes / 1e9:.2f} GB)")
    if upper_bound_ops:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(upper_bound_ops.items()))
        lines.append(f"UPPER BOUND: data-dependent selections took their largest size ({ops}); a real "
                     f"{smaller} uses less")
    if gpu_mem_gib is not None:
        verdict = "fits" if peak_gib <= gpu_mem_gib else "does NOT fit"
        lines.append(f"GPU memory {gpu_mem_gib:g} GiB: {verdict} ({peak_gib / gpu_mem_gib * 100:.0f}% used)")
    return "\n".join(lines)


@dataclasses.dataclass
class MemoryReport:
    """Peak memory of one training step on one GPU.

    Attributes:
        setup: what was estimated.
        breakdown: bytes per category at the peak (keys of ``CATEGORIES``).
        peak_bytes: the estimate (sum of ``breakdown``).
        activation_peak_bytes: largest activation bytes alive at any point of forward/backward.
        num_params / num_trainable / num_frozen: element counts.
        grad_checkpointing: whether the model checkpoints activations.
        upper_bound_ops: data-dependent ops (NMS, ``nonzero``, ...) that ran on fake values and were
            given their largest output size (op -> calls); when not empty the figure is an upper
            bound for that step (every box kept by NMS, every candidate selected).
    """

    setup: TrainingSetup
    breakdown: dict[str, int]
    peak_bytes: int
    activation_peak_bytes: int
    num_params: int
    num_trainable: int
    num_frozen: int
    grad_checkpointing: bool
    upper_bound_ops: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GiB

    def format_table(self, gpu_mem_gib: float | None = None) -> str:
        s = self.setup
        lines = [
            f"per-GPU batch {s.batch_per_gpu} (x{s.grad_accum_steps} accumulation) on {s.num_gpus} GPU(s); "
            f"{s.precision}; engine {s.engine}, ZeRO stage {s.zero_stage}; activation checkpointing "
            f"{'on' if self.grad_checkpointing else 'off'}",
            f"parameters: {self.num_trainable:,} trained, {self.num_frozen:,} frozen",
            f"{'component':<36}{'MiB':>12}{'GiB':>10}",
        ]
        return _format_rows(lines, CATEGORIES, self.breakdown, self.peak_bytes, self.upper_bound_ops,
                            "step with fewer boxes/proposals kept", gpu_mem_gib)


def _is_optimizer_state(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.numel() > 1


def _factors(setup: TrainingSetup) -> dict[str, float]:
    """How much of each category one rank holds under the setup's sharding."""
    n = setup.num_gpus
    f = {c: 1.0 for c in CATEGORIES}
    if setup.zero_stage >= 1:
        f["states"] = f["step_temp"] = f["master"] = 1.0 / n
    if setup.engine == "deepspeed" and setup.zero_stage >= 2:
        f["gradients"] = 1.0 / n
    if setup.engine == "deepspeed" and setup.zero_stage >= 3:
        f["params"] = 1.0 / n
    return f


def _comm_bytes(setup: TrainingSetup, trainable_numel: int, grad_itemsize: int) -> int:
    """Gradient communication buffers of the data-parallel engine (none on one GPU)."""
    if setup.num_gpus == 1:
        return 0
    if setup.engine == "torch":
        # DDP copies every gradient into its buckets unless gradient_as_bucket_view=True
        return 0 if setup.ddp_bucket_view else trainable_numel * grad_itemsize
    bucket = min(setup.ds_reduce_bucket, trainable_numel) * grad_itemsize
    if setup.zero_stage >= 3:  # parameters gathered ahead of use (current + prefetched bucket)
        bucket += 2 * min(setup.ds_prefetch_bucket, trainable_numel) * grad_itemsize
    return bucket


def _simulate_step(cfg: Any, setup: TrainingSetup, device_type: str) -> dict:
    """Run one training step on fake tensors; per-category timeline and model facts."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from eva_core.config import instantiate

    model = build_meta_model(cfg.model)
    # real tensors (the batch's labels and what is computed from them) meet fake ones: converted
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    tracker = StorageTracker()
    half_weights = setup.engine == "deepspeed" and setup.param_dtype != torch.float32
    with fake_mode:
        _materialize_fake(model, setup.param_dtype if half_weights else None)
    model.train()
    params = [p for p in model.parameters()]
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("the config's model has no trainable parameters")
    frozen_tensors = [p for p in params if not p.requires_grad] + list(model.buffers())
    teacher = getattr(model, "teacher", None)  # EvaMIM keeps its frozen teacher unregistered
    if isinstance(teacher, torch.nn.Module):
        frozen_tensors += list(teacher.parameters()) + list(teacher.buffers())
    gc_modules = [m for m in model.modules() if getattr(m, "grad_checkpointing", False)]

    batch = example_batch(model, cfg, setup.batch_per_gpu)
    opt_cfg = copy.deepcopy(cfg.optimizer)
    with fake_mode, tracker:
        fake_batch = _prepare_batch(batch, fake_mode, tracker, setup.param_dtype if half_weights else None)
        tracker.track(trainable, "params")
        tracker.track(frozen_tensors, "frozen")
        if half_weights:
            # DeepSpeed's optimizer steps fp32 copies of the half-precision weights
            tracker.category = "master"
            masters = [torch.empty_like(p, dtype=torch.float32) for p in trainable]
            opt_params = masters
        else:
            opt_params = trainable
        _set_optimizer_params(opt_cfg, model, trainable, opt_params)
        if device_type == "cuda" and "foreach" not in opt_cfg:
            opt_cfg.foreach = True  # torch's default for CUDA tensors (these fake ones say CPU)
        optimizer = instantiate(opt_cfg)
        for p in trainable:
            p.register_post_accumulate_grad_hook(lambda p: tracker.reclassify(p.grad, "gradients"))

        def optimizer_step():
            tracker.category = "step_temp"
            if setup.clip_grad:
                torch.nn.utils.clip_grad_norm_(trainable, setup.clip_grad, foreach=device_type == "cuda")
            if half_weights:
                for p, m in zip(trainable, masters):
                    m.grad = p.grad.float()
            optimizer.step()
            if half_weights:
                with torch.no_grad():
                    for p, m in zip(trainable, masters):
                        p.copy_(m)  # the updated master goes back into the half-precision weight
                        m.grad = None
            optimizer.zero_grad(set_to_none=True)
            for p in trainable:
                p.grad = None
            tracker.reclassify([v for s in optimizer.state.values() for v in s.values()
                                if _is_optimizer_state(v)], "states")

        # warm-up step with zero gradients: creates the optimizer state the measured step runs with
        for p in trainable:
            p.grad = torch.zeros_like(p)
        optimizer_step()
        tracker.reset_timeline()

        autocast = (torch.autocast("cpu", dtype=setup.amp_dtype) if setup.amp_dtype is not None
                    else _NullContext())
        activation_peak = 0
        # a second micro-batch runs with the first one's gradients alive: enough for any accumulation
        for _ in range(min(setup.grad_accum_steps, 2)):
            tracker.category = "activations"
            with autocast, planning_context(model, cfg):
                out = model(fake_batch)
            loss = _sum_losses(out)
            del out
            (loss / setup.grad_accum_steps).backward()
            del loss
        activation_peak = max(dict(s).get("activations", 0) for s in tracker.timeline)
        optimizer_step()
    timeline = [dict(s) for s in tracker.timeline]
    return dict(
        timeline=timeline,
        activation_peak=activation_peak,
        num_params=sum(p.numel() for p in params) + (sum(p.numel() for p in teacher.parameters())
                                                     if isinstance(teacher, torch.nn.Module) else 0),
        num_trainable=sum(p.numel() for p in trainable),
        grad_itemsize=trainable[0].element_size(),
        model_bytes=sum(t.numel() * t.element_size()
                        for t in list(model.parameters()) + list(model.buffers())),
        grad_checkpointing=bool(gc_modules),
        upper_bound_ops=dict(tracker.upper_bound_ops),
    )


def _prepare_batch(obj: Any, fake_mode: Any, tracker: StorageTracker, half: torch.dtype | None) -> Any:
    """The example batch for the simulated step: floating-point tensors (images, boxes) become fake,
    integer and boolean tensors (labels, label maps, masks) stay real so that what the model computes
    from them alone runs for real and value-dependent sizes come out exact. Dicts, lists, tuples and
    plain objects holding tensors (detectron2's ``Instances`` / ``Boxes``) are copied and walked."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            out = fake_mode.from_tensor(obj)
            if half is not None:
                out = out.to(half)  # DeepSpeed fp16 / bf16 feeds half-precision inputs
        else:
            out = obj.clone()
        tracker.reclassify(out, "input")
        return out
    if isinstance(obj, Mapping):
        return type(obj)((k, _prepare_batch(v, fake_mode, tracker, half)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        items = [_prepare_batch(v, fake_mode, tracker, half) for v in obj]
        return type(obj)(items) if not hasattr(obj, "_fields") else type(obj)(*items)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        new = copy.copy(obj)
        for k, v in vars(obj).items():
            setattr(new, k, _prepare_batch(v, fake_mode, tracker, half))
        return new
    return obj


class _NullContext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _sum_losses(out: Any) -> torch.Tensor:
    if isinstance(out, Mapping):
        losses = [v.float().sum() for k, v in out.items() if str(k).startswith("loss")]
        if not losses:
            raise ValueError("the model's training output has no key starting with 'loss' "
                             f"(keys: {sorted(out)})")
        return sum(losses)
    if isinstance(out, torch.Tensor):
        return out.float().sum()
    raise TypeError(f"the model returned {type(out).__name__} in train mode; expected a dict of losses")


def _set_optimizer_params(opt_cfg: Any, model: torch.nn.Module, trainable: list, opt_params: list) -> None:
    """Fill ``optimizer.params`` as the engine does (``params.model = model``)."""
    if isinstance(opt_cfg, DictConfig):
        opt_cfg._set_flag("allow_objects", True)
    params = OmegaConf.select(opt_cfg, "params") if isinstance(opt_cfg, DictConfig) else None
    if opt_params is not trainable or params is None:
        # DeepSpeed steps flat fp32 masters; param groups only change lr/decay, not memory
        opt_cfg.params = opt_params
    else:
        opt_cfg.params.model = model


def estimate_training_memory(cfg: Any, num_gpus: int = 1, device_type: str = "cuda") -> MemoryReport:
    """Peak memory per GPU of one training step of ``cfg`` (no GPU, no real allocation).

    Args:
        cfg: a LazyConfig (``model``, ``optimizer``, ``dataloader.train.total_batch_size``,
            ``train.*``) with any overrides already applied.
        num_gpus: data-parallel ranks the total batch and ZeRO shards are divided over.
        device_type: ``"cuda"`` (default; the optimizer runs torch's CUDA default, foreach) or
            ``"cpu"`` (the CPU default, per-tensor loop), so CPU measurements can be compared.

    Returns:
        the :class:`MemoryReport`.
    """
    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"device_type={device_type!r}: expected 'cuda' or 'cpu'")
    setup = read_training_setup(cfg, num_gpus)
    sim = _simulate_step(cfg, setup, device_type)
    factors = _factors(setup)
    constants = {"comm": _comm_bytes(setup, sim["num_trainable"], sim["grad_itemsize"]),
                 "ema": sim["model_bytes"] if setup.ema else 0}
    best, best_total = {}, -1
    for snap in sim["timeline"]:
        row = {c: int(round(v * factors.get(c, 1.0))) for c, v in snap.items()}
        row.update({c: v for c, v in constants.items() if v})
        total = sum(row.values())
        if total > best_total:
            best, best_total = row, total
    return MemoryReport(setup=setup, breakdown=best, peak_bytes=best_total,
                        activation_peak_bytes=sim["activation_peak"], num_params=sim["num_params"],
                        num_trainable=sim["num_trainable"],
                        num_frozen=sim["num_params"] - sim["num_trainable"],
                        grad_checkpointing=sim["grad_checkpointing"],
                        upper_bound_ops=sim["upper_bound_ops"])


# -------------------------------------------------------------------------------- suggestions
@dataclasses.dataclass
class Suggestion:
    """A change of the config and the estimate with it.

    Attributes:
        description: what the switch does.
        overrides: ready-to-paste ``key=value`` overrides.
        report: the estimate with the overrides applied.
    """

    description: str
    overrides: list[str]
    report: MemoryReport


def checkpointing_overrides(cfg: Any) -> list[str]:
    """Overrides that turn on activation checkpointing in every trained encoder of the model.

    Encoders are the ``create_model`` nodes of ``cfg.model`` (``grad_checkpointing`` is their
    constructor switch); ``+`` adds the key where the config does not set it yet. Other nodes
    whose ``grad_checkpointing`` or ``use_act_checkpoint`` is set to False are switched on too.
    """
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, DictConfig):
            target = node.get("_target_") if "_target_" in node else None
            name = target if isinstance(target, str) else getattr(target, "__qualname__", "")
            if name and name.rsplit(".", 1)[-1] == "create_model":
                prefix = "" if "grad_checkpointing" in node else "+"
                found.append(f"{prefix}{path}.grad_checkpointing=True")
            else:
                # other trained modules' own switches set off (ViTDet's ViT: use_act_checkpoint;
                # Mask2Former's EVAAdapter: grad_checkpointing)
                for key in ("grad_checkpointing", "use_act_checkpoint"):
                    if key in node and node.get(key) is False:
                        found.append(f"{path}.{key}=True")
            for k in node.keys():
                if k != "_target_":
                    walk(node._get_node(k), f"{path}.{k}")

    walk(cfg.model, "model")
    return found


def _with_overrides(cfg: Any, overrides: list[str]) -> Any:
    from eva_core.config import LazyConfig

    new = copy.deepcopy(cfg)
    return LazyConfig.apply_overrides(new, overrides)


def suggest_fixes(cfg: Any, report: MemoryReport, gpu_mem_gib: float,
                  device_type: str = "cuda") -> list[Suggestion]:
    """Switches that lower the peak, each re-estimated, for a config that does not fit.

    Tried one at a time: activation checkpointing, a higher ZeRO stage, bf16 autocast, a smaller
    per-GPU batch with more accumulation steps (same effective batch); and all of them together
    when none fits alone.
    """
    setup = report.setup
    n = setup.num_gpus
    candidates: list[tuple[str, list[str]]] = []
    if not report.grad_checkpointing:
        ckpt = checkpointing_overrides(cfg)
        if ckpt:
            candidates.append(("activation checkpointing (recompute each block in backward)", ckpt))
    if n > 1:
        if setup.engine == "torch" and setup.zero_stage == 0:
            candidates.append(("ZeRO-1: shard optimizer states over the GPUs", ["train.zero_stage=1"]))
        elif setup.engine == "deepspeed" and setup.zero_stage < 3:
            s = setup.zero_stage + 1
            what = {1: "optimizer states", 2: "optimizer states and gradients",
                    3: "optimizer states, gradients and parameters"}[s]
            candidates.append((f"DeepSpeed ZeRO-{s}: shard {what}",
                               [f"train.deepspeed.zero_optimization.stage={s}"]))
    if setup.engine == "torch" and setup.amp_dtype is None:
        candidates.append(("bf16 autocast", ["train.amp.enabled=True", "train.amp.dtype=bfloat16"]))
    per_gpu = setup.batch_per_gpu
    if per_gpu > 1:
        # activations scale with the batch: pick the largest halving that fits by that rule, then check it
        fixed = report.peak_bytes - report.breakdown.get("activations", 0) - report.breakdown.get("input", 0)
        var = report.peak_bytes - fixed
        b, k = per_gpu, 1
        while b > 1 and b % 2 == 0 and fixed + var * (b / per_gpu) > gpu_mem_gib * GiB:
            b, k = b // 2, k * 2
        if k == 1 and b % 2 == 0:
            b, k = b // 2, 2
        if k > 1:
            candidates.append((f"per-GPU batch {b} with {setup.grad_accum_steps * k} accumulation steps "
                               "(same effective batch)",
                               [f"dataloader.train.total_batch_size={b * n}",
                                f"train.grad_accum_steps={setup.grad_accum_steps * k}"]))
    out = [Suggestion(desc, ov, estimate_training_memory(_with_overrides(cfg, ov), n, device_type))
           for desc, ov in candidates]
    if out and not any(s.report.peak_gib <= gpu_mem_gib for s in out) and len(out) > 1:
        combined = [o for s in out for o in s.overrides]
        out.append(Suggestion("all of the above", combined,
                              estimate_training_memory(_with_overrides(cfg, combined), n, device_type)))
    return out


def format_suggestions(suggestions: list[Suggestion], gpu_mem_gib: float) -> str:
    lines = [f"does not fit in {gpu_mem_gib:g} GiB; switches that lower the peak (paste as overrides):"]
    for s in suggestions:
        verdict = "fits" if s.report.peak_gib <= gpu_mem_gib else "still too big"
        lines.append(f"  {s.report.peak_gib:8.2f} GiB  {verdict:<13} {s.description}")
        lines.append(f"      {' '.join(s.overrides)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- inference
@dataclasses.dataclass
class InferenceReport:
    """Peak memory of one evaluation forward pass (``torch.no_grad``) on one GPU.

    Attributes:
        batch_size: images per forward pass.
        amp_dtype: autocast dtype (the config's ``train.amp``; evaluation runs under it) or None.
        breakdown: bytes per category at the peak (``frozen``: weights and buffers, ``input``,
            ``activations``).
        peak_bytes: the estimate.
        num_params: parameter count.
        upper_bound_ops: as :attr:`MemoryReport.upper_bound_ops`.
    """

    batch_size: int
    amp_dtype: torch.dtype | None
    breakdown: dict[str, int]
    peak_bytes: int
    num_params: int
    upper_bound_ops: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GiB

    def format_table(self, gpu_mem_gib: float | None = None) -> str:
        labels = {"frozen": "weights + buffers", "input": "input batch",
                  "activations": "activations (no_grad: transient)"}
        lines = [f"evaluation forward pass, batch {self.batch_size}; "
                 f"{'autocast ' + _dtype_name(self.amp_dtype) if self.amp_dtype is not None else 'fp32'}",
                 f"parameters: {self.num_params:,}",
                 f"{'component':<36}{'MiB':>12}{'GiB':>10}"]
        return _format_rows(lines, labels, self.breakdown, self.peak_bytes, self.upper_bound_ops,
                            "pass with fewer boxes kept", gpu_mem_gib)


def estimate_inference_memory(cfg: Any, batch_size: int = 1) -> InferenceReport:
    """Peak memory of one evaluation forward pass of ``cfg.model`` (no GPU, no real allocation).

    The model runs in ``eval()`` mode under ``torch.no_grad`` and the config's autocast
    (``train.amp``) on a batch from :func:`inference_batch`, with its planning contexts active.
    The weights are kept in fp32, as the evaluation loop keeps them.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    batch_size = _positive_int(batch_size, "batch_size")
    amp_enabled = _select(cfg, "train.amp.enabled", False)
    amp = _amp_dtype(_select(cfg, "train.amp.dtype", "float16")) if amp_enabled else None
    model = build_meta_model(cfg.model)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    tracker = StorageTracker()
    with fake_mode:
        _materialize_fake(model)
    model.eval()
    batch = inference_batch(model, cfg, batch_size)
    with fake_mode, tracker:
        fake_batch = _prepare_batch(batch, fake_mode, tracker, None)
        tracker.track(list(model.parameters()) + list(model.buffers()), "frozen")
        tracker.reset_timeline()
        tracker.category = "activations"
        autocast = torch.autocast("cpu", dtype=amp) if amp is not None else _NullContext()
        with torch.no_grad(), autocast, planning_context(model, cfg):
            out = model(fake_batch)
        del out
    best, best_total = {}, -1
    for snap in tracker.timeline:
        row = dict(snap)
        total = sum(row.values())
        if total > best_total:
            best, best_total = row, total
    return InferenceReport(batch_size=batch_size, amp_dtype=amp, breakdown=best, peak_bytes=best_total,
                           num_params=sum(p.numel() for p in model.parameters()),
                           upper_bound_ops=dict(tracker.upper_bound_ops))
