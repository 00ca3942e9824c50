"""Multi-scale deformable attention (projects/Mask2Former-EVA) against Hugging Face transformers,
and its torch.compile'd fast path against the pure one (compiled for CPU here, for CUDA where present)."""
import logging
import os
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mask2former_eva.ms_deform_attn as msda_module  # noqa: E402
from mask2former_eva.ms_deform_attn import (MSDeformAttn, compile_failure,  # noqa: E402
                                            compiled_multi_scale_deformable_attention, fast_path_available,
                                            multi_scale_deformable_attention)
from transformers.models.mask2former import modeling_mask2former as hf  # noqa: E402

# non-square levels, one of them a single column, as a padded Mask2Former batch produces
SHAPES = [(6, 9), (3, 5), (2, 1)]


def _random_inputs(generator, batch=2, queries=7, heads=4, head_dim=8, points=3, shapes=SHAPES):
    seq = sum(h * w for h, w in shapes)
    value = torch.randn(batch, seq, heads, head_dim, generator=generator)
    # a third of the points fall outside [0, 1]: those read zero padding
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * 1.6 - 0.3
    weights = torch.randn(batch, queries, heads, len(shapes) * points, generator=generator).softmax(-1)
    weights = weights.view(batch, queries, heads, len(shapes), points)
    return value, locations, weights


@pytest.mark.parametrize("shapes_as_tensor", [False, True])
def test_msda_equals_transformers_on_non_square_levels_with_points_outside(shapes_as_tensor):
    value, locations, weights = _random_inputs(torch.Generator().manual_seed(0))
    shapes = torch.tensor(SHAPES) if shapes_as_tensor else SHAPES
    ours = multi_scale_deformable_attention(value, shapes, locations, weights)
    theirs = hf.multi_scale_deformable_attention(value, SHAPES, locations, weights)
    assert ours.shape == (2, 7, 4 * 8)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert ours.abs().max() > 0.1  # not a trivially zero comparison


def test_msda_gradients_equal_transformers():
    inputs = _random_inputs(torch.Generator().manual_seed(1))
    grads = []
    for fn in (multi_scale_deformable_attention, hf.multi_scale_deformable_attention):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        value, locations, weights = leaves
        out = fn(value, SHAPES, locations, weights)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([t.grad for t in leaves])
    for ours, theirs, name in zip(grads[0], grads[1], ("value", "sampling_locations", "attention_weights")):
        assert ours.abs().max() > 0, name
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0, msg=name)


def test_msda_points_outside_every_map_read_zeros():
    value, locations, weights = _random_inputs(torch.Generator().manual_seed(2))
    # more than a pixel outside every level: the bilinear taps are all zero padding
    far = torch.where(torch.rand_like(locations) < 0.5, locations - 3.0, locations + 3.0)
    out = multi_scale_deformable_attention(value, SHAPES, far, weights)
    assert torch.count_nonzero(out) == 0


def test_msda_samples_a_pixel_centre_exactly():
    # one level, one head, one point on the centre of pixel (row 1, col 2) of a 3x4 map
    value = torch.arange(12.0).view(1, 12, 1, 1)
    location = torch.tensor([(2 + 0.5) / 4, (1 + 0.5) / 3]).view(1, 1, 1, 1, 1, 2)
    out = multi_scale_deformable_attention(value, [(3, 4)], location, torch.ones(1, 1, 1, 1, 1))
    assert out.item() == pytest.approx(1 * 4 + 2)


def test_msda_rejects_value_that_spatial_shapes_do_not_cover():
    value, locations, weights = _random_inputs(torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match=r"value has 71 positions but spatial_shapes .* cover 70"):
        multi_scale_deformable_attention(value, [(6, 9), (3, 5), (1, 1)], locations, weights)
    with pytest.raises(ValueError, match="attention_weights has shape"):
        multi_scale_deformable_attention(value, SHAPES, locations, weights[:, :, :, :2])


def _hf_module(d_model, n_levels, n_heads, n_points):
    module = hf.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(
        embed_dim=d_model, num_heads=n_heads, n_levels=n_levels, n_points=n_points)
    # transformers initialises through the pretrained-model class; call its rule on the module
    config = SimpleNamespace(init_xavier_std=1.0, init_std=0.02)
    hf.Mask2FormerPreTrainedModel._init_weights(SimpleNamespace(config=config), module)
    return module


def test_msdeformattn_parameter_names_and_initialisation_equal_transformers():
    torch.manual_seed(0)
    theirs = _hf_module(32, 3, 4, 4).state_dict()
    torch.manual_seed(0)
    ours = MSDeformAttn(d_model=32, n_levels=3, n_heads=4, n_points=4).state_dict()
    # the key sets are equal: no mapping is needed between the two layouts
    assert list(ours) == list(theirs)
    for key in ours:
        # same seed and same init order: xavier weights are equal too, not only the constants
        torch.testing.assert_close(ours[key], theirs[key], atol=0, rtol=0, msg=key)
    bias = ours["sampling_offsets.bias"].view(4, 3, 4, 2)
    # head 1 of 4 points along +y (direction pi/2), point k at distance k + 1
    torch.testing.assert_close(bias[1, 0, :, 1], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.count_nonzero(ours["attention_weights.weight"]) == 0


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_msdeformattn_module_equals_transformers_with_padding_mask(ref_dim):
    g = torch.Generator().manual_seed(4)
    d_model, n_levels, n_heads, n_points, batch, queries = 32, 3, 4, 2, 2, 5
    ours = MSDeformAttn(d_model, n_levels, n_heads, n_points, fast_path=False)
    with torch.no_grad():  # away from the init so that every parameter matters
        for p in ours.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    theirs = hf.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(d_model, n_heads, n_levels,
                                                                            n_points)
    theirs.load_state_dict(ours.state_dict())
    seq = sum(h * w for h, w in SHAPES)
    query = torch.randn(batch, queries, d_model, generator=g)
    memory = torch.randn(batch, seq, d_model, generator=g)
    ref = torch.rand(batch, queries, n_levels, ref_dim, generator=g)
    if ref_dim == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1  # box sizes
    padding = torch.zeros(batch, seq, dtype=torch.bool)
    padding[1, 40:54] = True  # the right part of the second image's first level is padding
    starts = torch.tensor([0, 54, 69])
    out = ours(query, ref, memory, torch.tensor(SHAPES), starts, padding)
    expected, _ = theirs(hidden_states=query, attention_mask=padding, encoder_hidden_states=memory,
                         reference_points=ref, spatial_shapes_list=SHAPES)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # the mask matters: without it the second image's output changes
    unmasked = ours(query, ref, memory, SHAPES)
    assert (unmasked[1] - out[1]).abs().max() > 1e-4
    torch.testing.assert_close(unmasked[0], out[0])


def test_msdeformattn_rejects_inconsistent_level_start_index_and_reference_points():
    attn = MSDeformAttn(16, 3, 2, 2)
    query, memory = torch.zeros(1, 4, 16), torch.zeros(1, 71, 16)
    with pytest.raises(ValueError, match=r"input_level_start_index \[0, 54, 60\] disagrees"):
        attn(query, torch.zeros(1, 4, 3, 2), memory, SHAPES, torch.tensor([0, 54, 60]))
    with pytest.raises(ValueError, match=r"reference_points must be \[1, 4, 3, 2 or 4\], got \(1, 4, 3, 3\)"):
        attn(query, torch.zeros(1, 4, 3, 3), memory, SHAPES)


def test_fast_path_is_chosen_only_on_cuda_and_can_be_switched_off(monkeypatch, caplog):
    assert not fast_path_available("cpu")
    assert not MSDeformAttn(16, 3, 2, 2)._use_fast_path(torch.device("cpu"))
    assert MSDeformAttn(16, 3, 2, 2, fast_path=True)._use_fast_path(torch.device("cpu"))
    assert not MSDeformAttn(16, 3, 2, 2, fast_path=False)._use_fast_path(torch.device("cuda"))
    # the choice is logged once per device type and path, not on every forward
    monkeypatch.setattr(msda_module, "_LOGGED_CHOICES", set())
    attn = MSDeformAttn(16, 3, 2, 2)
    query, memory, ref = torch.zeros(1, 4, 16), torch.zeros(1, 71, 16), torch.rand(1, 4, 3, 2)
    with caplog.at_level(logging.INFO, logger=msda_module.__name__):
        for _ in range(3):
            attn(query, ref, memory, SHAPES)
    choices = [r.getMessage() for r in caplog.records if "path (" in r.getMessage()]
    assert choices == ["MSDeformAttn on cpu: pure PyTorch path (fast_path=None: compiled only on CUDA with "
                       "Triton)"]


# Tolerance of compiled vs pure. Both paths do the same fp32 arithmetic in a different order:
# Inductor fuses the grid unnormalisation, the 4 bilinear taps and the sum over levels x points into
# one vectorised loop. Each number here is a sum of at most 4 taps x 3 levels x 3 points = 36
# products (forward; the backward sums over 8 channels or over the queries that hit a pixel), so
# reordering moves it by at most ~36 eps = 4.3e-6 (eps = 1.19e-7) of the summands' magnitude; the
# locations' gradient also carries the factor W or H (<= 9) of the unnormalisation. Hence
# atol = 1e-5 x the tensor's largest magnitude (at least 1). Measured on CPU (Inductor C++, seed 5):
# forward 2.2e-7, gradient w.r.t. the attention weights 9.5e-7, w.r.t. value and locations exactly
# equal (their backward is the same aten kernel in both). A sampling grid shifted by a tenth of a
# pixel changes the output by more than 100x the tolerance (checked below), a twentieth of a pixel
# by 7e-2 (tried by hand): real errors do not hide under it.
def _tolerance(expected):
    return 1e-5 * max(1.0, expected.abs().max().item())


def _assert_equal_up_to_rounding(actual, expected, name):
    torch.testing.assert_close(actual, expected, atol=_tolerance(expected), rtol=0,
                               msg=lambda m: f"{name}: {m}")


def _compare_compiled_with_pure(compiled, inputs):
    leaves = [[t.clone().requires_grad_(True) for t in inputs] for _ in range(2)]
    outs = [fn(v, SHAPES, loc, w) for fn, (v, loc, w) in
            zip((multi_scale_deformable_attention, compiled), leaves)]
    _assert_equal_up_to_rounding(outs[1], outs[0], "output")
    assert outs[0].abs().max() > 0.1  # not a trivially zero comparison
    # a non-uniform upstream gradient, so that every element's gradient is distinct
    upstream = torch.linspace(-1, 1, outs[0].numel(), device=outs[0].device).view_as(outs[0])
    for out in outs:
        (out * upstream).sum().backward()
    for name, ours, ref in zip(("value", "sampling_locations", "attention_weights"), leaves[1], leaves[0]):
        assert ref.grad.abs().max() > 0.1, name
        _assert_equal_up_to_rounding(ours.grad, ref.grad, f"gradient w.r.t. {name}")
    return outs[0]


@pytest.fixture(scope="module")
def cpu_compiled():
    """The compiled path for CPU, compiled once for this module (tens of seconds with a cold cache)."""
    from torch._inductor.cpp_builder import get_cpp_compiler
    try:
        get_cpp_compiler()
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"Inductor's CPU backend needs a C++ compiler (g++, or the one $CXX names): "
                    f"{type(err).__name__}: {err}")
    return compiled_multi_scale_deformable_attention()


@pytest.mark.slow
@pytest.mark.xdist_group("msda_compiled_cpu")
def test_compiled_path_equals_pure_path_on_cpu(cpu_compiled):
    inputs = _random_inputs(torch.Generator().manual_seed(5))
    pure = _compare_compiled_with_pure(cpu_compiled, inputs)
    assert compile_failure("cpu") is None, f"Inductor could not compile for CPU: {compile_failure('cpu')}"
    assert msda_module._COMPILED[("cpu", torch.float32, False)] is not multi_scale_deformable_attention
    # the tolerance is tight enough to see a tenth of a pixel's shift of the finest level's grid
    value, locations, weights = inputs
    shifted = locations.clone()
    shifted[:, :, :, 0, :, 0] += 0.1 / SHAPES[0][1]
    moved = (multi_scale_deformable_attention(value, SHAPES, shifted, weights) - pure.detach()).abs().max()
    assert moved > 100 * _tolerance(pure.detach())


@pytest.mark.slow
@pytest.mark.xdist_group("msda_compiled_cpu")
def test_msdeformattn_with_fast_path_forced_equals_pure_path_on_cpu(cpu_compiled):
    g = torch.Generator().manual_seed(6)
    # d_model 32 = 4 heads x 8, 3 levels, 3 points, batch 2, 7 queries: the shapes of _random_inputs,
    # so that the graph compiled by the test above is reused (a new shape would compile again)
    modules = [MSDeformAttn(32, 3, 4, 3, fast_path=fast) for fast in (False, True)]
    with torch.no_grad():
        for p in modules[0].parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    modules[1].load_state_dict(modules[0].state_dict())
    query = torch.randn(2, 7, 32, generator=g)
    memory = torch.randn(2, sum(h * w for h, w in SHAPES), 32, generator=g)
    ref = torch.rand(2, 7, 3, 2, generator=g)
    outs = [m(query, ref, memory, SHAPES) for m in modules]
    _assert_equal_up_to_rounding(outs[1], outs[0], "MSDeformAttn output")
    upstream = torch.linspace(-1, 1, outs[0].numel()).view_as(outs[0])
    for out in outs:
        (out * upstream).sum().backward()
    for (name, p_pure), p_fast in zip(modules[0].named_parameters(), modules[1].parameters()):
        assert p_pure.grad.abs().max() > 0, name
        _assert_equal_up_to_rounding(p_fast.grad, p_pure.grad, f"gradient of {name}")
    assert compile_failure("cpu") is None, f"Inductor could not compile for CPU: {compile_failure('cpu')}"


@pytest.fixture
def fresh_compile_cache(monkeypatch):
    """Empty compile caches for one test (the real compiled functions are left alone)."""
    monkeypatch.setattr(msda_module, "_COMPILED", {})
    monkeypatch.setattr(msda_module, "_COMPILE_FAILURES", {})


def test_compiled_function_is_built_once_per_device_dtype_and_dynamic(monkeypatch, caplog,
                                                                      fresh_compile_cache):
    built = []

    def fake_compile(fn, dynamic):
        built.append(dynamic)
        return lambda *args: fn(*args) + 1.0  # visibly not the pure function's result

    monkeypatch.setattr(torch, "compile", fake_compile)
    value, locations, weights = _random_inputs(torch.Generator().manual_seed(7))
    static = compiled_multi_scale_deformable_attention()
    dynamic = compiled_multi_scale_deformable_attention(dynamic=True)
    with caplog.at_level(logging.INFO, logger=msda_module.__name__):
        for _ in range(2):
            out = static(value, SHAPES, locations, weights)
            static(value.double(), SHAPES, locations.double(), weights.double())
            dynamic(value, SHAPES, locations, weights)
    assert built == [False, False, True]
    assert sorted(msda_module._COMPILED, key=str) == sorted(
        [("cpu", torch.float32, False), ("cpu", torch.float64, False), ("cpu", torch.float32, True)], key=str)
    torch.testing.assert_close(out, multi_scale_deformable_attention(value, SHAPES, locations, weights) + 1.0)
    assert len([r for r in caplog.records if "path built" in r.getMessage()]) == 3


def test_compile_failure_at_build_falls_back_with_one_warning(monkeypatch, caplog, fresh_compile_cache):
    def broken_compile(fn, dynamic):
        raise RuntimeError("no C++ compiler in this test")

    monkeypatch.setattr(torch, "compile", broken_compile)
    value, locations, weights = _random_inputs(torch.Generator().manual_seed(8))
    expected = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    with caplog.at_level(logging.WARNING, logger=msda_module.__name__):
        for _ in range(3):
            out = compiled_multi_scale_deformable_attention()(value, SHAPES, locations, weights)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "torch.compile failed for device cpu, torch.float32, dynamic=False" in warnings[0].getMessage()
    assert "RuntimeError: no C++ compiler in this test" in warnings[0].getMessage()
    assert compile_failure("cpu") == "RuntimeError: no C++ compiler in this test"


def test_compile_failure_at_first_call_falls_back_but_input_errors_still_raise(monkeypatch, caplog,
                                                                               fresh_compile_cache):
    calls = []

    def lazily_broken(*args):  # Inductor compiles at the first call, so that is where it fails
        calls.append(1)
        raise RuntimeError("InductorError: C++ compile error in this test")

    monkeypatch.setattr(torch, "compile", lambda fn, dynamic: lazily_broken)
    value, locations, weights = _random_inputs(torch.Generator().manual_seed(9))
    attend = compiled_multi_scale_deformable_attention()
    with caplog.at_level(logging.WARNING, logger=msda_module.__name__):
        # a shape error is the caller's: raised as the pure function raises it, no fallback recorded
        with pytest.raises(ValueError, match="attention_weights has shape"):
            attend(value, SHAPES, locations, weights[:, :, :, :2])
        assert compile_failure("cpu") is None and not caplog.records
        for _ in range(3):
            out = attend(value, SHAPES, locations, weights)
    torch.testing.assert_close(out, multi_scale_deformable_attention(value, SHAPES, locations, weights),
                               atol=0, rtol=0)
    assert len(calls) == 2  # the bad-input call and the first good one; then the pure path only
    assert len(caplog.records) == 1 and "C++ compile error in this test" in caplog.records[0].getMessage()


@pytest.mark.skipif(not fast_path_available("cuda"), reason="the compiled fast path needs CUDA and Triton")
def test_compiled_fast_path_equals_pure_path_on_cuda():
    inputs = [t.cuda() for t in _random_inputs(torch.Generator().manual_seed(5))]
    _compare_compiled_with_pure(compiled_multi_scale_deformable_attention(), inputs)
    assert compile_failure("cuda") is None, f"Inductor could not compile for CUDA: {compile_failure('cuda')}"
