"""ViT-Adapter on the EVA encoder (projects/Mask2Former-EVA): shapes, interactions, gradients,
activation checkpointing, the injector's identity start and the mmseg checkpoint layout."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers.models.mask2former import modeling_mask2former as hf

from eva_core.checkpoint import load_checkpoint, save_atomic
from eva_core.models.eva import Eva
from eva_core.optim.layer_decay import param_groups_layer_decay
from mask2former_eva import layouts  # noqa: F401  (registers mmseg_beit_adapter)
from mask2former_eva.adapter_modules import AdapterDeformAttn, Injector, deform_inputs
from mask2former_eva.ms_deform_attn import MSDeformAttn
from mask2former_eva.vit_adapter import EVAAdapter, check_interaction_indexes, even_interaction_indexes

DIM, DEPTH, HEADS, INPLANES, DEFORM_HEADS, RATIO = 32, 5, 2, 8, 4, 0.5
# uneven groups: the ranges, not a block count per group, decide which blocks an interaction runs
INDEXES = [[0, 0], [1, 2], [3, 3], [4, 4]]


def _encoder(**kw):
    kw = {"img_size": 64, **kw}
    return Eva(patch_size=16, num_classes=0, global_pool="", embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
               mlp_ratio=2.0, use_post_transformer_norm=False, **kw)


def _adapter(seed=0, encoder_kw=None, **kw):
    torch.manual_seed(seed)
    kw = {"interaction_indexes": INDEXES, "conv_inplane": INPLANES, "deform_num_heads": DEFORM_HEADS,
          "deform_ratio": RATIO, **kw}
    return EVAAdapter(_encoder(**(encoder_kw or {})), **kw)


def test_adapter_returns_strides_4_8_16_32_on_a_non_square_input():
    model = _adapter()
    feats = model(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(2, DIM, 16, 24), (2, DIM, 8, 12), (2, DIM, 4, 6),
                                               (2, DIM, 2, 3)]
    assert model.out_strides == (4, 8, 16, 32)
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.randn(1, 3, 48, 64))


def test_adapter_runs_a_windowed_encoder_without_class_token():
    # ViTDet-style encoder: windowed blocks need a sequence without prefix tokens
    model = _adapter(encoder_kw={"class_token": False, "pos_embed_cls_slot": True, "window_size": 2,
                                 "global_block_indexes": (2, 4)})
    assert model.encoder.num_prefix_tokens == 0
    feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_interaction_indexes_cover_every_block_once_in_order():
    assert even_interaction_indexes(40) == [[0, 9], [10, 19], [20, 29], [30, 39]]
    assert check_interaction_indexes(INDEXES, DEPTH) == INDEXES
    for bad, msg in (([[0, 1], [3, 4]], r"interaction_indexes\[1\]"),  # gap
                     ([[0, 1], [1, 4]], r"interaction_indexes\[1\]"),  # overlap
                     ([[0, 1], [2, 3]], "cover blocks 0..3 but the encoder has 5")):
        with pytest.raises(ValueError, match=msg):
            check_interaction_indexes(bad, DEPTH)
    with pytest.raises(ValueError, match="add_vit_feature needs 4 interactions"):
        EVAAdapter(_encoder(), interaction_indexes=[[0, 1], [2, 4]])
    with pytest.raises(ValueError, match="patch-16"):
        EVAAdapter(Eva(img_size=56, patch_size=14, num_classes=0, global_pool="", embed_dim=DIM, depth=2,
                       num_heads=HEADS))

    model = _adapter()
    calls = [0] * DEPTH
    for i, blk in enumerate(model.encoder.blocks):
        blk.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    model(torch.randn(1, 3, 64, 64))
    assert calls == [1] * DEPTH


def test_gradients_reach_the_encoder_the_spatial_prior_module_and_the_adapter():
    model = _adapter(init_values=0.1).train()
    feats = model(torch.randn(2, 3, 64, 64))
    # fixed random read-outs: a plain mean of BatchNorm outputs has no gradient
    gen = torch.Generator().manual_seed(1)
    loss = sum((f * torch.randn(f.shape, generator=gen)).sum() for f in feats)
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    zero = {n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0}
    # Deformable DETR's init zeroes the weights from the query to the offsets and attention weights,
    # so the query norms get no gradient at step 0; those zero weights do, and open the path next step
    assert zero == {n for n, _ in model.named_parameters() if ".query_norm." in n}
    assert model.interactions[0].injector.attn.sampling_offsets.weight.grad.abs().sum() > 0
    for part in ("encoder.blocks.0.", "encoder.patch_embed.", "encoder.pos_embed", "encoder.cls_token",
                 "spm.", "interactions.0.injector.attn.", "interactions.3.extra_extractors.1.ffn.",
                 "level_embed", "up."):
        assert any(n.startswith(part) for n, _ in model.named_parameters())


def test_layer_decay_gives_the_adapter_the_full_lr_as_the_release_does():
    # EVA-01 seg's get_num_layer_for_vit: backbone.blocks.i -> i + 1, stem -> 0, anything else
    # (spm, interactions, level_embed, up, norm1..4) -> L + 1
    model = _adapter()
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=0.9)
             for p in g["params"]}
    assert scale["encoder.pos_embed"] == pytest.approx(0.9 ** (DEPTH + 1))
    assert scale["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(0.9 ** DEPTH)
    adapter = [n for n in scale if not n.startswith("encoder.")]
    assert adapter and all(scale[n] == 1.0 for n in adapter)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    results = []
    for enable in (False, True):
        model = _adapter(seed=3, init_values=0.1, grad_checkpointing=enable).train()
        calls = [0]
        mlp_forward = model.encoder.blocks[1].mlp.forward

        def counting_forward(x, mlp_forward=mlp_forward, calls=calls):
            # a wrapper, not a forward hook: module hooks do not fire during checkpoint recomputation
            calls[0] += 1
            return mlp_forward(x)

        model.encoder.blocks[1].mlp.forward = counting_forward
        loss = sum((f * (i + 1)).square().mean() for i, f in enumerate(model(images)))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, calls[0]))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results
    # checkpointing recomputes the block in backward: proof that it was on
    assert (calls_a, calls_b) == (1, 2)
    assert torch.allclose(loss_a, loss_b, atol=1e-6)
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-6, rtol=1e-5), name


def test_injector_with_zero_gamma_leaves_the_vit_tokens_unchanged_at_init():
    # ViT-Adapter (and EVA's BEiTAdapter, inj_init_values=0.) start gamma at 0
    injector = Injector(DIM, num_heads=DEFORM_HEADS, deform_ratio=RATIO)
    assert torch.equal(injector.gamma, torch.zeros(DIM))
    images = torch.randn(2, 3, 64, 96)
    inject, _ = deform_inputs(images)
    tokens = torch.randn(2, 4 * 6, DIM)
    pyramid = torch.randn(2, sum(h * w for h, w in inject.spatial_shapes), DIM)
    assert torch.equal(injector(tokens, pyramid, inject), tokens)

    # so the whole adapter's encoder path computes exactly the plain encoder's blocks
    model = _adapter().eval()
    captured = []
    model.encoder.blocks[-1].register_forward_hook(lambda m, args, out: captured.append(out))
    with torch.no_grad():
        model(images)
        model.encoder.forward_features(images)
    assert torch.allclose(captured[0], captured[1], atol=1e-6)


def test_adapter_deform_attn_with_ratio_1_equals_msdeformattn():
    torch.manual_seed(0)
    ours = AdapterDeformAttn(DIM, n_levels=3, n_heads=4, n_points=2, ratio=1.0)
    ref = MSDeformAttn(DIM, n_levels=3, n_heads=4, n_points=2)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.1)
    ref.load_state_dict(ours.state_dict())
    shapes = [(4, 6), (2, 3), (1, 2)]
    query = torch.randn(2, 5, DIM)
    refs = torch.rand(2, 5, 3, 2)
    feat = torch.randn(2, sum(h * w for h, w in shapes), DIM)
    assert torch.allclose(ours(query, refs, feat, shapes), ref(query, refs, feat, shapes), atol=1e-6)
    half = AdapterDeformAttn(DIM, n_levels=3, n_heads=4, ratio=0.5)
    assert tuple(half.value_proj.weight.shape) == (DIM // 2, DIM)
    assert tuple(half.output_proj.weight.shape) == (DIM, DIM // 2)


def test_adapter_deform_attn_with_ratio_half_equals_transformers_sampling_of_narrow_values():
    # ViT-Adapter's op: values projected to ratio * d_model, split over the heads, sampled at
    # reference + offset / (W_l, H_l), softmax over levels x points, then output_proj back to d_model
    torch.manual_seed(1)
    heads, levels, points = 4, 3, 2
    attn = AdapterDeformAttn(DIM, n_levels=levels, n_heads=heads, n_points=points, ratio=0.5)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.2)
    shapes = [(4, 6), (2, 3), (1, 2)]
    query, refs = torch.randn(2, 5, DIM), torch.rand(2, 5, levels, 2)
    feat = torch.randn(2, sum(h * w for h, w in shapes), DIM)
    value = attn.value_proj(feat).view(2, -1, heads, DIM // 2 // heads)
    offsets = attn.sampling_offsets(query).view(2, 5, heads, levels, points, 2)
    weights = attn.attention_weights(query).view(2, 5, heads, -1).softmax(-1)
    weights = weights.view(2, 5, heads, levels, points)
    norm = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    locations = refs[:, :, None, :, None] + offsets / norm[None, None, None, :, None]
    expected = attn.output_proj(hf.multi_scale_deformable_attention(value, shapes, locations, weights))
    assert torch.allclose(attn(query, refs, feat, shapes), expected, atol=1e-5)


def _mmseg_backbone_file(depth, interactions, dim, inplanes, ratio, grid, mlp_hidden):
    """A state dict with the key names and shapes of EVA-01's mmseg BEiTAdapter (EVA-01/seg
    mmseg_custom/models/backbones/{beit_adapter,adapter_modules,base/beit}.py), random values."""
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim),
              "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,),
              "level_embed": (3, dim), "up.weight": (dim, dim, 2, 2), "up.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.q_bias": (dim,),
                       b + "attn.v_bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim),
                       b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                       b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                       b + "mlp.fc1.weight": (mlp_hidden, dim), b + "mlp.fc1.bias": (mlp_hidden,),
                       b + "mlp.fc2.weight": (dim, mlp_hidden), b + "mlp.fc2.bias": (dim,)})

    def bn(prefix, ch):
        shapes.update({prefix + "weight": (ch,), prefix + "bias": (ch,), prefix + "running_mean": (ch,),
                       prefix + "running_var": (ch,), prefix + "num_batches_tracked": ()})

    for idx, (cin, cout) in zip((0, 3, 6), ((3, inplanes), (inplanes, inplanes), (inplanes, inplanes))):
        shapes[f"spm.stem.{idx}.weight"] = (cout, cin, 3, 3)
        bn(f"spm.stem.{idx + 1}.", cout)
    for name, cin, cout in (("conv2", inplanes, 2 * inplanes), ("conv3", 2 * inplanes, 4 * inplanes),
                            ("conv4", 4 * inplanes, 4 * inplanes)):
        shapes[f"spm.{name}.0.weight"] = (cout, cin, 3, 3)
        bn(f"spm.{name}.1.", cout)
    for k, cin in enumerate((inplanes, 2 * inplanes, 4 * inplanes, 4 * inplanes), start=1):
        shapes[f"spm.fc{k}.weight"], shapes[f"spm.fc{k}.bias"] = (dim, cin, 1, 1), (dim,)
    for k in range(1, 5):
        bn(f"norm{k}.", dim)

    def attn(prefix, levels):
        vdim = int(dim * ratio)
        shapes.update({prefix + "sampling_offsets.weight": (DEFORM_HEADS * levels * 4 * 2, dim),
                       prefix + "sampling_offsets.bias": (DEFORM_HEADS * levels * 4 * 2,),
                       prefix + "attention_weights.weight": (DEFORM_HEADS * levels * 4, dim),
                       prefix + "attention_weights.bias": (DEFORM_HEADS * levels * 4,),
                       prefix + "value_proj.weight": (vdim, dim), prefix + "value_proj.bias": (vdim,),
                       prefix + "output_proj.weight": (dim, vdim), prefix + "output_proj.bias": (dim,)})

    def extractor(prefix):
        hidden = int(dim * 0.25)
        for norm in ("query_norm", "feat_norm", "ffn_norm"):
            shapes[f"{prefix}{norm}.weight"], shapes[f"{prefix}{norm}.bias"] = (dim,), (dim,)
        attn(prefix + "attn.", 1)
        shapes.update({prefix + "ffn.fc1.weight": (hidden, dim), prefix + "ffn.fc1.bias": (hidden,),
                       prefix + "ffn.dwconv.dwconv.weight": (hidden, 1, 3, 3),
                       prefix + "ffn.dwconv.dwconv.bias": (hidden,),
                       prefix + "ffn.fc2.weight": (dim, hidden), prefix + "ffn.fc2.bias": (dim,)})

    for k in range(interactions):
        inj = f"interactions.{k}.injector."
        shapes[inj + "gamma"] = (dim,)
        for norm in ("query_norm", "feat_norm"):
            shapes[f"{inj}{norm}.weight"], shapes[f"{inj}{norm}.bias"] = (dim,), (dim,)
        attn(inj + "attn.", 3)
        extractor(f"interactions.{k}.extractor.")
        if k == interactions - 1:
            extractor(f"interactions.{k}.extra_extractors.0.")
            extractor(f"interactions.{k}.extra_extractors.1.")
    gen = torch.Generator().manual_seed(5)
    sd = {"backbone." + k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    sd.update({k: torch.tensor(7) for k in sd if k.endswith("num_batches_tracked")})
    # part of the Mask2FormerHead that shares the file (names from mmdet's Mask2FormerHead)
    sd["decode_head.query_embed.weight"] = torch.randn(10, 16, generator=gen)
    sd["decode_head.cls_embed.weight"] = torch.randn(5, 16, generator=gen)
    sd["decode_head.pixel_decoder.input_convs.0.conv.weight"] = torch.randn(16, dim, 1, 1, generator=gen)
    return sd


def test_mmseg_beit_adapter_checkpoint_loads_with_nothing_missing_or_unexpected(tmp_path):
    model = _adapter()  # img_size 64: a 4x4 position grid, as in the file
    sd = _mmseg_backbone_file(DEPTH, len(INDEXES), DIM, INPLANES, RATIO, grid=4, mlp_hidden=2 * DIM)
    path = tmp_path / "eva_sem_seg_mask2former_tiny.pth"
    save_atomic({"meta": {"mmseg_version": "0.20.2", "iter": 60000}, "state_dict": sd}, path)

    report = load_checkpoint(model, path)
    assert report.layout == "mmseg_beit_adapter"
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert report.loaded_fraction == 1.0
    assert any("decode_head.* (3)" in note for note in report.notes)
    ours = model.state_dict()
    for key, value in sd.items():
        if key.startswith("backbone."):
            name = key[len("backbone."):]
            if not name.startswith(("level_embed", "spm.", "interactions.", "up.", "norm")):
                name = f"encoder.{name}"
            assert torch.equal(ours[name], value), name
    # the loaded model runs and its injector gammas are the file's (no re-initialisation on load)
    assert torch.equal(model.interactions[0].injector.gamma, sd["backbone.interactions.0.injector.gamma"])
    model.eval()(torch.randn(1, 3, 64, 64))


def test_eva_g_adapter_has_the_release_shapes():
    # EVA-01 seg config (docs/recipes/segmentation.md), built on the meta device: no memory, no time
    with torch.device("meta"):
        encoder = Eva(img_size=896, patch_size=16, num_classes=0, global_pool="", embed_dim=1408,
                      depth=40, num_heads=16, mlp_ratio=6144 / 1408, use_post_transformer_norm=False,
                      drop_path_rate=0.5)
        model = EVAAdapter(encoder, conv_inplane=64, n_points=4, deform_num_heads=16, cffn_ratio=0.25,
                           deform_ratio=0.5, drop_path_rate=0.5, grad_checkpointing=True)
    assert model.interaction_indexes == [[0, 9], [10, 19], [20, 29], [30, 39]]
    sd = model.state_dict()
    assert tuple(sd["encoder.pos_embed"].shape) == (1, 1 + 56 * 56, 1408)
    assert tuple(sd["spm.stem.0.weight"].shape) == (64, 3, 3, 3)
    assert tuple(sd["interactions.0.injector.attn.value_proj.weight"].shape) == (704, 1408)  # ratio 0.5
    # 16 heads x 3 levels x 4 points x (x, y)
    assert tuple(sd["interactions.0.injector.attn.sampling_offsets.weight"].shape) == (384, 1408)
    assert tuple(sd["interactions.0.extractor.ffn.fc1.weight"].shape) == (352, 1408)  # cffn ratio 0.25
    # only the last interaction has the two extra extractors
    assert [k.split(".")[1] for k in sd if k.endswith("extra_extractors.1.ffn.fc2.weight")] == ["3"]
    assert model.interactions[0].extractor.drop_path.drop_prob == 0.5
    assert model.encoder.grad_checkpointing and model.interactions[3].extra_extractors[1].with_cp


def test_a_plain_encoder_checkpoint_initialises_the_adapters_encoder(tmp_path):
    # the training init (eva_psz14to16.pt) is a bare encoder file: it fills encoder.*, the adapter
    # keeps its fresh init, and min_loaded="encoder" (the engine's default for init) is met
    source = _encoder(img_size=32)  # a 2x2 position grid, resampled to the model's 4x4
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    path = tmp_path / "eva_encoder.pth"
    save_atomic({"model": source.state_dict()}, path)
    model = _adapter()
    fresh_gamma = model.interactions[0].injector.gamma.clone()
    report = load_checkpoint(model, path, min_loaded="encoder")
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(model.encoder.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)
    assert tuple(model.encoder.pos_embed.shape) == (1, 1 + 16, DIM)
    assert torch.equal(model.interactions[0].injector.gamma, fresh_gamma)
