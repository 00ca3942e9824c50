"""Mask2Former head on ViT-Adapter-EVA (projects/Mask2Former-EVA): pixel decoder, masked-attention
decoder, segmentor training and inference (whole, sliding window, multi-scale + flip), parity with
transformers' Mask2Former and the released mmseg checkpoint layout."""
import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from eva_core.models.eva import Eva
from mask2former_eva.mask2former_head import Mask2FormerHead, semantic_inference
from mask2former_eva.segmentor import (EncoderDecoderMask2Former, build_criterion, semantic_targets,
                                       slide_windows)
from mask2former_eva.transformer_decoder import attention_mask_from_masks
from mask2former_eva.vit_adapter import EVAAdapter

DIM, NUM_CLASSES, QUERIES, LAYERS, HEADS = 32, 5, 10, 3, 4


def _segmentor(seed=0, **kw):
    torch.manual_seed(seed)
    encoder = Eva(patch_size=16, num_classes=0, global_pool="", embed_dim=DIM, depth=4, num_heads=2,
                  mlp_ratio=2.0, use_post_transformer_norm=False, img_size=64)
    backbone = EVAAdapter(encoder, conv_inplane=8, deform_num_heads=HEADS, deform_ratio=0.5)
    head = Mask2FormerHead([DIM] * 4, NUM_CLASSES, feat_channels=DIM, out_channels=DIM, num_queries=QUERIES,
                           pixel_decoder_layers=2, pixel_decoder_heads=HEADS, pixel_decoder_ffn=2 * DIM,
                           decoder_layers=LAYERS, decoder_heads=HEADS, decoder_ffn=2 * DIM, num_groups=8)
    criterion = build_criterion(NUM_CLASSES, LAYERS, num_points=256)
    return EncoderDecoderMask2Former(backbone, head, criterion, **kw)


def _label_maps():
    """Two 64x64 maps: class rectangles on a background, a strip of ignored pixels in the first."""
    y = torch.zeros(2, 64, 64, dtype=torch.long)
    y[0, 8:40, 8:40] = 1
    y[0, 30:60, 36:60] = 3
    y[0, :, :4] = 255
    y[1, 20:50, 0:30] = 2
    y[1, 0:16, 40:64] = 4
    return y


def _images(labels):
    # each class has its own colour, plus noise: learnable from the pixels
    gen = torch.Generator().manual_seed(1)
    colours = torch.randn(256, 3, generator=gen)
    return colours[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(labels.shape[0], 3, 64, 64, generator=gen)


# ---------------------------------------------------------------------------------------------- shapes
def test_head_returns_final_and_one_auxiliary_prediction_per_decoder_layer():
    model = _segmentor()
    feats = model.backbone(torch.randn(2, 3, 64, 96))
    out = model.decode_head(feats)
    assert out["pred_logits"].shape == (2, QUERIES, NUM_CLASSES + 1)
    assert out["pred_masks"].shape == (2, QUERIES, 16, 24)  # stride 4
    assert len(out["aux_outputs"]) == LAYERS  # the prediction before the first layer + after layers 1..L-1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == out["pred_logits"].shape
        assert aux["pred_masks"].shape == out["pred_masks"].shape
    # the first auxiliary prediction comes from the learned queries alone: the same for every image
    first = out["aux_outputs"][0]["pred_logits"]
    torch.testing.assert_close(first[0], first[1])


def test_training_forward_returns_weighted_losses_for_every_prediction():
    model = _segmentor()
    labels = _label_maps()
    losses = model.train()({"image": _images(labels), "sem_seg": labels})
    names = {"loss_ce", "loss_mask", "loss_dice"}
    expected = names | {f"{n}_{i}" for n in names for i in range(LAYERS)}
    assert set(losses) == expected
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def test_semantic_targets_make_one_mask_per_present_class_and_leave_ignored_pixels_out():
    labels = _label_maps()[0]
    t = semantic_targets(labels, NUM_CLASSES)
    assert t["labels"].tolist() == [0, 1, 3]
    assert t["masks"].shape == (3, 64, 64)
    assert t["masks"][:, :, :4].sum() == 0  # ignored strip belongs to no class
    assert torch.equal(t["masks"].sum(0) == 1, labels != 255)
    bad = labels.clone()
    bad[0, 10] = 7
    with pytest.raises(ValueError, match="holds label 7, expected 0 .. 4 or ignore_label 255"):
        semantic_targets(bad, NUM_CLASSES, name="ann/0001.png")


def test_a_few_training_steps_on_a_hand_made_batch_lower_the_loss():
    model = _segmentor().train()
    labels = _label_maps()
    batch = {"image": _images(labels), "sem_seg": labels}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(12):
        total = sum(model(batch).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert sum(totals[-3:]) / 3 < 0.9 * totals[0], totals


# ------------------------------------------------------------------------------------- masked attention
def test_attention_mask_blocks_pixels_below_half_and_opens_fully_masked_rows():
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[0, 0, :2, :2] = 5.0  # query 0: on in the top-left quarter
    logits[0, 1] = 5.0  # query 1: on everywhere; query 2: off everywhere
    mask = attention_mask_from_masks(logits, (4, 4), num_heads=2)
    assert mask.shape == (2, 3, 16) and mask.dtype == torch.bool
    expected_q0 = torch.ones(4, 4, dtype=torch.bool)
    expected_q0[:2, :2] = False
    for head in range(2):
        assert torch.equal(mask[head, 0], expected_q0.flatten())
        assert not mask[head, 1].any()
        assert not mask[head, 2].any()  # fully masked row: opened, not NaN


def test_decoder_with_every_mask_empty_stays_finite():
    model = _segmentor().eval()
    head = model.decode_head
    with torch.no_grad():
        # a mask embedding of zero and a large negative bias: every query's mask is off everywhere
        last = head.transformer_decoder.mask_embed[-1]
        last.weight.zero_()
        feats = model.backbone(torch.randn(1, 3, 64, 64))
        head.pixel_decoder.mask_feature.weight.zero_()
        head.pixel_decoder.mask_feature.bias.fill_(1.0)
        last.bias.fill_(-10.0)
        out = head(feats)
    assert (out["aux_outputs"][0]["pred_masks"] < 0).all()
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_masks"]).all()


# ---------------------------------------------------------------------------------------------- inference
class _PointwiseBackbone(nn.Module):
    """Translation-free stand-in: 4 'maps' that are the image itself."""

    def forward(self, x):
        return [x] * 4


class _PointwiseHead(nn.Module):
    """Scores from a 1x1 conv of the image: each output pixel depends on its input pixel only."""

    num_classes, num_layers = NUM_CLASSES, 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)

    def semantic_scores(self, feats, size=None):
        return self.conv(feats[0])


def _pointwise_segmentor(**kw):
    torch.manual_seed(0)
    return EncoderDecoderMask2Former(_PointwiseBackbone(), _PointwiseHead(), **kw).eval()


def test_slide_windows_cover_the_image_with_the_last_window_moved_back_to_the_border():
    assert slide_windows(64, 100, (64, 64), (32, 32)) == [(0, 64, 0, 64), (0, 64, 32, 96), (0, 64, 36, 100)]
    assert slide_windows(40, 50, (64, 64), (32, 32)) == [(0, 40, 0, 50)]  # smaller than the crop: one window


def test_slide_inference_of_a_translation_free_model_equals_whole_inference():
    x = torch.randn(1, 3, 70, 100)
    slide = _pointwise_segmentor(test_mode="slide", crop_size=32, stride=20, size_divisor=1)
    whole = _pointwise_segmentor(test_mode="whole", size_divisor=1)
    with torch.no_grad():
        torch.testing.assert_close(slide({"image": x})["sem_seg"], whole({"image": x})["sem_seg"])


def test_slide_inference_averages_overlapping_windows_by_count():
    model = _segmentor(test_mode="slide", crop_size=64, stride=32).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model({"image": x})["sem_seg"]
        left, right = model.encode_decode(x[..., :64]), model.encode_decode(x[..., 32:])
    assert out.shape == (1, NUM_CLASSES, 64, 96)
    torch.testing.assert_close(out[..., :32], left[..., :32])
    torch.testing.assert_close(out[..., 32:64], (left[..., 32:] + right[..., :32]) / 2)
    torch.testing.assert_close(out[..., 64:], right[..., 32:])


def test_flip_tta_is_the_mean_of_the_image_and_its_flipped_back_mirror():
    model = _segmentor(test_flip=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model({"image": x})["sem_seg"]
        plain = model.encode_decode(x)
        mirrored = model.encode_decode(x.flip(-1)).flip(-1)
        flipped_out = model({"image": x.flip(-1)})["sem_seg"]
    torch.testing.assert_close(out, (plain + mirrored) / 2)
    # averaging over both orientations makes the prediction mirror-equivariant
    torch.testing.assert_close(flipped_out, out.flip(-1))


def test_multi_scale_tta_averages_scores_resized_back_to_the_input():
    model = _segmentor(test_scales=(1.0, 0.5)).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model({"image": x})["sem_seg"]
        half = nn.functional.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False)
        small = nn.functional.interpolate(model.encode_decode(half), size=(64, 96), mode="bilinear",
                                          align_corners=False)
        expected = (model.encode_decode(x) + small) / 2
    torch.testing.assert_close(out, expected)


def test_eval_output_is_what_the_sem_seg_evaluator_reads():
    from eva_core.evaluation.sem_seg import SemSegEvaluator

    model = _segmentor().eval()
    labels = _label_maps()
    evaluator = SemSegEvaluator(NUM_CLASSES)
    with torch.no_grad():
        out = model({"image": _images(labels)})
        # images of different sizes come as a list and give one prediction each
        listed = model({"image": [torch.randn(3, 48, 64), torch.randn(3, 64, 40)]})
    assert out["sem_seg"].shape == (2, NUM_CLASSES, 64, 64)
    assert [o["sem_seg"].shape for o in listed] == [(NUM_CLASSES, 48, 64), (NUM_CLASSES, 64, 40)]
    evaluator.process({"sem_seg": labels}, out)
    assert 0.0 <= evaluator.evaluate()["sem_seg"]["mIoU"] <= 100.0


def test_semantic_inference_is_class_probability_times_mask_probability_without_no_object():
    logits = torch.randn(2, 4, NUM_CLASSES + 1)
    masks = torch.randn(2, 4, 3, 5)
    scores = semantic_inference(logits, masks)
    expected = (logits.softmax(-1)[..., :-1, None, None] * masks.sigmoid()[:, :, None]).sum(1)
    torch.testing.assert_close(scores, expected)


# ---------------------------------------------------------------------------------------------- parity
def _hf_config(decoder_layers):
    from transformers import Mask2FormerConfig

    # width 32: transformers fixes GroupNorm at 32 groups; 4 sampling points, 3 levels as ours
    return Mask2FormerConfig(feature_size=DIM, mask_feature_size=DIM, hidden_dim=DIM,
                             encoder_feedforward_dim=48, encoder_layers=2, decoder_layers=decoder_layers + 1,
                             num_attention_heads=HEADS, dim_feedforward=40, num_queries=QUERIES, dropout=0.0,
                             pre_norm=False, enforce_input_projection=False, common_stride=4,
                             feature_strides=[4, 8, 16, 32])


def _randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def _pixel_decoder_to_transformers(sd):
    """Our pixel-decoder keys -> transformers' Mask2FormerPixelDecoder keys."""
    out = {}
    for k, v in sd.items():
        k = (k.replace("input_proj.", "input_projections.").replace("layers.", "encoder.layers.")
             .replace(".norm1.", ".self_attn_layer_norm.").replace(".norm2.", ".final_layer_norm.")
             .replace(".linear1.", ".fc1.").replace(".linear2.", ".fc2.")
             .replace("lateral_convs.0.", "adapter_1.").replace("output_convs.0.", "layer_1.")
             .replace("mask_feature.", "mask_projection."))
        out[k] = v
    return out


def test_pixel_decoder_equals_transformers_mask2former_pixel_decoder():
    from transformers.models.mask2former import modeling_mask2former as hf

    from mask2former_eva.pixel_decoder import MSDeformAttnPixelDecoder

    ours = MSDeformAttnPixelDecoder([16, 24, 40, 48], DIM, DIM, num_layers=2, num_heads=HEADS,
                                    ffn_channels=48, num_groups=32).eval()
    _randomize(ours, 0)
    theirs = hf.Mask2FormerPixelDecoder(_hf_config(LAYERS), feature_channels=[16, 24, 40, 48]).eval()
    theirs.load_state_dict(_pixel_decoder_to_transformers(ours.state_dict()), strict=True)
    gen = torch.Generator().manual_seed(1)
    # a non-square input: 32x48 at stride 4 down to 4x6 at stride 32
    feats = [torch.randn(2, c, 32 // 2 ** i, 48 // 2 ** i, generator=gen)
             for i, c in enumerate([16, 24, 40, 48])]
    with torch.no_grad():
        mask_features, multi_scale = ours(feats)
        ref = theirs(feats)
    torch.testing.assert_close(mask_features, ref.mask_features, rtol=0, atol=1e-5)
    assert len(multi_scale) == len(ref.multi_scale_features) == 3
    for a, b in zip(multi_scale, ref.multi_scale_features):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def _decoder_to_transformers(sd):
    """Our decoder keys -> transformers' Mask2FormerTransformerModule keys (cls_embed has no counterpart
    there: transformers' class predictor sits in Mask2FormerForUniversalSegmentation)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("cls_embed."):
            continue
        if k.startswith("layers."):
            i, rest = k.split(".", 2)[1:]
            base = f"decoder.layers.{i}."
            if rest.startswith("self_attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight / bias
                for name, part in zip("qkv", v.chunk(3)):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = part
                continue
            rest = (rest.replace("norm1.", "cross_attn_layer_norm.")
                    .replace("norm2.", "self_attn_layer_norm.").replace("norm3.", "final_layer_norm.")
                    .replace("linear1.", "fc1.").replace("linear2.", "fc2."))
            out[base + rest] = v
            continue
        k = (k.replace("query_embed.", "queries_embedder.").replace("query_feat.", "queries_features.")
             .replace("post_norm.", "decoder.layernorm."))
        if k.startswith("mask_embed."):
            idx, kind = k.split(".")[1:]
            k = f"decoder.mask_predictor.mask_embedder.{int(idx) // 2}.0.{kind}"
        out[k] = v
    return out


def test_masked_attention_decoder_equals_transformers_at_every_layer():
    from transformers.models.mask2former import modeling_mask2former as hf

    from mask2former_eva.transformer_decoder import MaskedAttentionDecoder

    ours = MaskedAttentionDecoder(NUM_CLASSES, DIM, DIM, DIM, num_queries=QUERIES, num_heads=HEADS,
                                  ffn_channels=40, num_layers=LAYERS).eval()
    _randomize(ours, 2)
    theirs = hf.Mask2FormerTransformerModule(in_features=DIM, config=_hf_config(LAYERS)).eval()
    theirs.load_state_dict(_decoder_to_transformers(ours.state_dict()), strict=True)
    # float64: the masks are thresholded at sigmoid 0.5 between layers, where fp32 rounding of mask
    # logits of size ~50 (a few 1e-5) could flip a pixel; in float64 the two agree to ~1e-13
    ours, theirs = ours.double(), theirs.double()
    gen = torch.Generator().manual_seed(3)
    multi_scale = [torch.randn(2, DIM, h, w, generator=gen, dtype=torch.float64)
                   for h, w in [(3, 4), (6, 8), (12, 16)]]
    mask_features = torch.randn(2, DIM, 24, 32, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out = ours(multi_scale, mask_features)
        ref = theirs(multi_scale, mask_features)
    predictions = out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}]
    assert len(predictions) == len(ref.masks_queries_logits) == LAYERS + 1
    for ours_pred, masks, hidden in zip(predictions, ref.masks_queries_logits,
                                        ref.intermediate_hidden_states):
        torch.testing.assert_close(ours_pred["pred_masks"], masks, rtol=0, atol=1e-9)
        # transformers returns the normed queries [Q, B, C]; the class logits are one linear layer on them
        with torch.no_grad():
            logits = ours.cls_embed(hidden.transpose(0, 1))
        torch.testing.assert_close(ours_pred["pred_logits"], logits, rtol=0, atol=1e-9)
    # the attention masks were not trivial: some pixels blocked, some open
    blocked = attention_mask_from_masks(predictions[0]["pred_masks"], (3, 4), HEADS)
    assert blocked.any() and not blocked.all()


# -------------------------------------------------------------------------------------- released layout
def _mmdet_head_shapes(dim, num_classes, queries, pd_layers, pd_heads, pd_ffn, dec_layers, dec_ffn):
    """``decode_head.*`` key names and shapes of the release's mmdet Mask2FormerHead, written from its
    module structure (mmdet 2.x ``Mask2FormerHead`` / ``MSDeformAttnPixelDecoder`` on mmcv ``ConvModule``
    (conv + gn), ``BaseTransformerLayer`` (attentions / ffns / norms in operation order) and ``FFN``
    (layers.0.0, layers.1)), 4 input levels and every width ``dim``."""
    shapes = {}

    def add(name, *shape):
        shapes[name] = shape

    def linear(name, n_out, n_in):
        add(f"{name}.weight", n_out, n_in)
        add(f"{name}.bias", n_out)

    def norm(name):
        add(f"{name}.weight", dim)
        add(f"{name}.bias", dim)

    pd = "decode_head.pixel_decoder."
    for i in range(3):
        add(f"{pd}input_convs.{i}.conv.weight", dim, dim, 1, 1)
        add(f"{pd}input_convs.{i}.conv.bias", dim)
        norm(f"{pd}input_convs.{i}.gn")
    add(f"{pd}level_encoding.weight", 3, dim)
    for n in range(pd_layers):
        layer = f"{pd}encoder.layers.{n}."
        # heads x levels (3) x points (4) x (x, y)
        linear(f"{layer}attentions.0.sampling_offsets", pd_heads * 3 * 4 * 2, dim)
        linear(f"{layer}attentions.0.attention_weights", pd_heads * 3 * 4, dim)
        linear(f"{layer}attentions.0.value_proj", dim, dim)
        linear(f"{layer}attentions.0.output_proj", dim, dim)
        linear(f"{layer}ffns.0.layers.0.0", pd_ffn, dim)
        linear(f"{layer}ffns.0.layers.1", dim, pd_ffn)
        norm(f"{layer}norms.0")
        norm(f"{layer}norms.1")
    add(f"{pd}lateral_convs.0.conv.weight", dim, dim, 1, 1)  # no conv bias before a norm
    norm(f"{pd}lateral_convs.0.gn")
    add(f"{pd}output_convs.0.conv.weight", dim, dim, 3, 3)
    norm(f"{pd}output_convs.0.gn")
    add(f"{pd}mask_feature.weight", dim, dim, 1, 1)
    add(f"{pd}mask_feature.bias", dim)
    td = "decode_head.transformer_decoder."
    for n in range(dec_layers):
        layer = f"{td}layers.{n}."
        for a in range(2):  # attentions.0: cross-attention, attentions.1: self-attention
            add(f"{layer}attentions.{a}.attn.in_proj_weight", 3 * dim, dim)
            add(f"{layer}attentions.{a}.attn.in_proj_bias", 3 * dim)
            linear(f"{layer}attentions.{a}.attn.out_proj", dim, dim)
        linear(f"{layer}ffns.0.layers.0.0", dec_ffn, dim)
        linear(f"{layer}ffns.0.layers.1", dim, dec_ffn)
        for j in range(3):
            norm(f"{layer}norms.{j}")
    norm(f"{td}post_norm")
    add("decode_head.query_embed.weight", queries, dim)
    add("decode_head.query_feat.weight", queries, dim)
    add("decode_head.level_embed.weight", 3, dim)
    linear("decode_head.cls_embed", num_classes + 1, dim)
    for j in (0, 2, 4):
        linear(f"decode_head.mask_embed.{j}", dim, dim)
    # mmseg BaseDecodeHead's classifier: in the file, never used by Mask2Former
    add("decode_head.conv_seg.weight", num_classes, dim, 1, 1)
    add("decode_head.conv_seg.bias", num_classes)
    return shapes


def test_eva_release_head_has_the_release_checkpoint_shapes():
    # the EVA-01 ADE20K head (docs/recipes/segmentation.md): width 1024, 200 queries, 6 pixel-decoder
    # layers, 8 decoder layers, 32 heads, FFN 4096; built on the meta device (no memory, no time)
    from mask2former_eva.layouts import mmdet_head_key_to_ours

    with torch.device("meta"):
        head = Mask2FormerHead([1024] * 4, 150, 1024, 1024, num_queries=200, pixel_decoder_layers=6,
                               pixel_decoder_heads=32, pixel_decoder_ffn=4096, decoder_layers=8,
                               decoder_heads=32, decoder_ffn=4096)
    ours = {f"decode_head.{k}": tuple(v.shape) for k, v in head.state_dict().items()}
    release = _mmdet_head_shapes(1024, 150, 200, 6, 32, 4096, 8, 4096)
    mapped = {}
    for key, shape in release.items():
        name = mmdet_head_key_to_ours(key[len("decode_head."):])
        if name is not None:
            mapped[f"decode_head.{name}"] = shape
    assert mapped == ours
    assert sum(v.numel() for v in head.parameters()) == sum(torch.Size(s).numel() for s in mapped.values())


def test_released_mmseg_checkpoint_loads_strictly_into_the_segmentor(tmp_path):
    from test_vit_adapter import DIM as ADAPTER_DIM
    from test_vit_adapter import INDEXES, INPLANES, RATIO, _adapter, _mmseg_backbone_file

    from eva_core.checkpoint import load_checkpoint, save_atomic

    backbone = _adapter()
    head = Mask2FormerHead([ADAPTER_DIM] * 4, NUM_CLASSES, feat_channels=ADAPTER_DIM,
                           out_channels=ADAPTER_DIM, num_queries=QUERIES, pixel_decoder_layers=2,
                           pixel_decoder_heads=HEADS, pixel_decoder_ffn=48, decoder_layers=LAYERS,
                           decoder_heads=HEADS, decoder_ffn=40, num_groups=8)
    model = EncoderDecoderMask2Former(backbone, head, build_criterion(NUM_CLASSES, LAYERS, num_points=64))
    gen = torch.Generator().manual_seed(0)
    sd = _mmseg_backbone_file(len(backbone.encoder.blocks), len(INDEXES), ADAPTER_DIM, INPLANES, RATIO,
                              grid=4, mlp_hidden=2 * ADAPTER_DIM)
    sd = {k: v for k, v in sd.items() if not k.startswith("decode_head.")}  # that file's partial head
    shapes = _mmdet_head_shapes(ADAPTER_DIM, NUM_CLASSES, QUERIES, 2, HEADS, 48, LAYERS, 40)
    sd.update({k: torch.randn(s, generator=gen) for k, s in shapes.items()})
    path = tmp_path / "eva_sem_seg_mask2former_tiny.pth"
    save_atomic({"meta": {"mmseg_version": "0.20.2"}, "state_dict": sd}, path)

    report = load_checkpoint(model, path, strict=True, min_loaded=1.0)
    assert report.layout == "mmseg_beit_adapter"
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert report.loaded_fraction == 1.0
    assert any("conv_seg" in note for note in report.notes)
    ours = model.state_dict()
    pd, td = model.decode_head.pixel_decoder, model.decode_head.transformer_decoder
    p, t = "decode_head.pixel_decoder.", "decode_head.transformer_decoder."
    spot_checks = {
        f"{p}input_convs.2.gn.weight": pd.input_proj[2][1].weight,
        f"{p}level_encoding.weight": pd.level_embed,
        f"{p}encoder.layers.1.attentions.0.value_proj.weight": pd.layers[1].self_attn.value_proj.weight,
        f"{p}encoder.layers.0.ffns.0.layers.1.weight": pd.layers[0].linear2.weight,
        f"{p}encoder.layers.0.norms.1.bias": pd.layers[0].norm2.bias,
        f"{p}lateral_convs.0.conv.weight": pd.lateral_convs[0][0].weight,
        f"{p}output_convs.0.gn.bias": pd.output_convs[0][1].bias,
        f"{t}layers.2.attentions.0.attn.in_proj_weight": td.layers[2].cross_attn.in_proj_weight,
        f"{t}layers.2.attentions.1.attn.out_proj.bias": td.layers[2].self_attn.out_proj.bias,
        f"{t}layers.1.norms.2.weight": td.layers[1].norm3.weight,
        f"{t}layers.1.ffns.0.layers.0.0.bias": td.layers[1].linear1.bias,
        f"{t}post_norm.weight": td.post_norm.weight,
        "decode_head.query_feat.weight": td.query_feat.weight,
        "decode_head.mask_embed.4.weight": td.mask_embed[4].weight,
        "decode_head.cls_embed.bias": td.cls_embed.bias,
        "backbone.spm.stem.0.weight": model.backbone.spm.stem[0].weight,
        "backbone.blocks.1.mlp.fc2.weight": model.backbone.encoder.blocks[1].mlp.fc2.weight,
    }
    for key, param in spot_checks.items():
        assert torch.equal(param, sd[key]), key
    # every tensor of the segmentor came from the file
    recomputed = sum(k.endswith("relative_position_index") for k in sd)  # buffers rebuilt, not loaded
    assert len(report.loaded) == len(ours) == len(sd) - 2 - recomputed  # 2: conv_seg
    model.eval()({"image": torch.randn(1, 3, 64, 64)})


# ---------------------------------------------------------------------------------------------- engine
def test_segmentor_trains_with_the_engine_trainer_and_evaluates_with_inference_on_dataset():
    from eva_core.engine.train_loop import SimpleTrainer
    from eva_core.evaluation import inference_on_dataset
    from eva_core.evaluation.sem_seg import SemSegEvaluator
    from eva_core.optim.layer_decay import param_groups_layer_decay

    model = _segmentor()
    labels = _label_maps()
    batch = {"image": _images(labels), "sem_seg": labels, "file_name": ["a.png", "b.png"]}
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.9)
    scale = {name: g["lr_scale"] for g in groups for name in g["param_names"]}
    # the release's layer decay: the encoder's blocks decay, the head trains at the full lr
    assert scale["decode_head.transformer_decoder.cls_embed.weight"] == 1.0
    block = "backbone.encoder.blocks.{}.attn.qkv.weight"
    assert scale[block.format(0)] < scale[block.format(3)] < 1
    trainer = SimpleTrainer(model, [batch], torch.optim.AdamW(groups, lr=1e-3), clip_grad=1.0)
    trainer.train(0, 2)
    logged = trainer.storage.latest()
    assert {"loss_ce", "loss_dice_0", "total_loss", "grad_norm"} <= set(logged)
    results = inference_on_dataset(model, [batch], SemSegEvaluator(NUM_CLASSES))
    assert 0.0 <= results["sem_seg"]["mIoU"] <= 100.0
    assert model.training  # inference_on_dataset restores the mode


def test_head_activation_checkpointing_gives_the_same_losses_and_gradients():
    model = _segmentor().train()
    labels = _label_maps()
    batch = {"image": _images(labels), "sem_seg": labels}
    results = []
    for enable in (False, True):
        model.decode_head.pixel_decoder.grad_checkpointing = enable
        model.decode_head.transformer_decoder.grad_checkpointing = enable
        model.zero_grad()
        torch.manual_seed(7)  # the same matcher / loss points in both runs
        losses = model(batch)
        sum(losses.values()).backward()
        grads = {k: p.grad.clone() for k, p in model.decode_head.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in losses.items()}, grads))
    (losses_a, grads_a), (losses_b, grads_b) = results
    torch.testing.assert_close(losses_b, losses_a)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 50
    torch.testing.assert_close(grads_b, grads_a)


def test_training_pads_inputs_to_a_multiple_of_32_with_ignored_labels():
    model = _segmentor().train()
    labels = _label_maps()[:, :50, :60]  # 50 x 60: padded to 64 x 64
    losses = model({"image": _images(_label_maps())[:, :, :50, :60], "sem_seg": labels})
    assert all(torch.isfinite(v) for v in losses.values())
    padded_images, padded_labels = model._pad(torch.zeros(2, 3, 50, 60), labels)
    assert padded_images.shape[-2:] == padded_labels.shape[-2:] == (64, 64)
    assert (padded_labels[:, 50:] == 255).all() and (padded_labels[:, :, 60:] == 255).all()


def test_bad_batches_fail_naming_the_key_the_file_or_the_shapes():
    model = _segmentor().train()
    labels = _label_maps()
    images = _images(labels)
    with pytest.raises(KeyError, match="batch has no 'sem_seg' entry"):
        model({"image": images})
    with pytest.raises(ValueError, match=r"label maps \(2, 32, 32\) do not match images \(2, 3, 64, 64\)"):
        model({"image": images, "sem_seg": labels[:, :32, :32]})
    bad = labels.clone()
    bad[1, 0, 0] = 9
    with pytest.raises(ValueError, match="b.png: holds label 9"):
        model({"image": images, "sem_seg": bad, "file_name": ["a.png", "b.png"]})
    with pytest.raises(ValueError, match="test_mode must be 'whole' or 'slide'"):
        EncoderDecoderMask2Former(model.backbone, model.decode_head, test_mode="sliding")


def test_eval_scores_are_resized_to_each_images_original_size():
    model = _segmentor().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model({"image": x, "ori_size": [(50, 70), (64, 64)]})
        scores = model.encode_decode(x)
    assert [o["sem_seg"].shape for o in out] == [(NUM_CLASSES, 50, 70), (NUM_CLASSES, 64, 64)]
    expected = nn.functional.interpolate(scores[:1], size=(50, 70), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out[0]["sem_seg"], expected)
    torch.testing.assert_close(out[1]["sem_seg"], scores[1])


def test_bf16_autocast_trains_with_fp32_losses_and_predicts_fp32_scores():
    model = _segmentor().train()
    labels = _label_maps()
    images = _images(labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model({"image": images, "sem_seg": labels})
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model({"image": images})["sem_seg"]
        full = model({"image": images})["sem_seg"]
    assert low.dtype == torch.float32
    assert (low.argmax(1) == full.argmax(1)).float().mean() > 0.95
