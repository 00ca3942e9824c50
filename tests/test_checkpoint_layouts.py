"""``eva_core.load_checkpoint`` reads every EVA checkpoint layout (tiny files written in each layout)."""
from __future__ import annotations

import pickle

import pytest
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed

import eva_core
from eva_core.checkpoint import CheckpointFormatError, save_atomic
from eva_core.checkpoint import layouts
from eva_core.checkpoint.layouts import detect_layout
from eva_core.checkpoint.loader import CheckpointMismatchError
from tools import convert_checkpoint

SMALL = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3)


def model(**kw):
    return eva_core.create_model("eva_giant_patch14_224", **{**SMALL, "mlp_ratio": 4.0, **kw}).eval()


def mim_state_dict() -> dict[str, torch.Tensor]:
    """EVA-01 MIM layout: mask_token, final norm, lm_head (docs/recipes/encoder.md#eva-01-mim-pre-trained)."""
    enc = model(num_classes=0, use_mask_token=True, use_fc_norm=False, global_pool="token")
    sd = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        sd["norm.weight"].normal_(1, 0.1)
        sd["lm_head.weight"] = torch.randn(8, 48)
        sd["lm_head.bias"] = torch.randn(8)
    return sd


def test_mim_file_into_mean_pooling_classifier_drops_pretrain_keys_and_moves_norm_to_fc_norm(tmp_path):
    sd = mim_state_dict()
    assert {"mask_token", "lm_head.weight", "norm.weight"} <= sd.keys()
    path = tmp_path / "eva_psz14.pt"
    torch.save({"model": sd, "args": None, "epoch": 149}, path)
    clf = model(num_classes=5)
    report = eva_core.load_checkpoint(clf, path)
    assert report.layout == "eva_mim"
    assert sorted(report.dropped) == ["lm_head.bias", "lm_head.weight", "mask_token"]
    assert report.missing == ["head.bias", "head.weight"] and not report.unexpected and not report.mismatched
    torch.testing.assert_close(clf.fc_norm.weight, sd["norm.weight"])
    torch.testing.assert_close(clf.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
    with pytest.raises(CheckpointMismatchError, match=r"missing \(2\): \['head.bias', 'head.weight'\]"):
        eva_core.load_checkpoint(model(num_classes=5), path, strict=True)


def test_mim_file_into_mim_encoder_keeps_mask_token_and_norm():
    sd = mim_state_dict()
    enc = model(num_classes=0, use_mask_token=True, use_fc_norm=False, global_pool="token")
    report = eva_core.load_checkpoint(enc, {"module": sd})
    assert report.ok
    assert report.dropped == ["lm_head.bias", "lm_head.weight"]  # lm_head lives in the MIM model
    torch.testing.assert_close(enc.mask_token, sd["mask_token"])
    torch.testing.assert_close(enc.norm.weight, sd["norm.weight"])


def test_finetuned_file_prefers_ema_weights_and_reports_head_shape_mismatch():
    src = model(num_classes=10)
    ema = {k: v + 1 for k, v in src.state_dict().items()}
    dst = model(num_classes=10)
    eva_core.load_checkpoint(dst, {"model": src.state_dict(), "model_ema": ema}, strict=True)
    torch.testing.assert_close(dst.pos_embed, ema["pos_embed"])
    eva_core.load_checkpoint(dst, {"model": src.state_dict(), "model_ema": ema}, use_ema=False)
    torch.testing.assert_close(dst.pos_embed, src.pos_embed)
    other = model(num_classes=3)
    report = eva_core.load_checkpoint(other, {"state_dict": src.state_dict()})
    assert report.mismatched == [("head.weight", (10, 48), (3, 48)), ("head.bias", (10,), (3,))]
    with pytest.raises(CheckpointMismatchError, match=r"head.weight', \(10, 48\), \(3, 48\)"):
        eva_core.load_checkpoint(other, src.state_dict(), strict=True)


def test_eva_clip_vision_tower_under_visual_with_inner_norms():
    src = model(num_classes=16, global_pool="token", attn_inner_norm=True, mlp_norm=True)
    sd = {}
    for k, v in src.state_dict().items():
        k = k.replace("attn.norm.", "attn.inner_attn_ln.").replace("mlp.norm.", "mlp.ffn_ln.")
        sd["visual." + k] = v.clone()
    sd["text.token_embedding.weight"] = torch.randn(10, 8)
    sd["logit_scale"] = torch.tensor(4.6)
    assert detect_layout(sd) == "eva_clip"
    dst = model(num_classes=16, global_pool="token", attn_inner_norm=True, mlp_norm=True)
    report = eva_core.load_checkpoint(dst, {"state_dict": sd}, strict=True)
    assert "2 keys outside prefix 'visual.' ignored" in report.notes
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))


def test_open_clip_timm_trunk_under_visual_trunk():
    src = model(num_classes=0, global_pool="token")
    sd = {"visual.trunk." + k: v for k, v in src.state_dict().items()}
    sd["visual.head.proj.weight"] = torch.randn(16, 48)
    assert detect_layout(sd) == "open_clip"
    dst = model(num_classes=0, global_pool="token")
    assert eva_core.load_checkpoint(dst, sd, strict=True).layout == "open_clip"
    torch.testing.assert_close(dst.state_dict(), src.state_dict())


def test_deepspeed_fp16_file_is_cast_to_the_model_dtype(tmp_path):
    src = model(num_classes=4)
    fp16 = {k: v.half() for k, v in src.state_dict().items()}
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": fp16, "buffer_names": [], "ds_version": "0.19.8", "global_steps": 10}, path)
    dst = model(num_classes=4)
    report = eva_core.load_checkpoint(dst, path, strict=True)
    assert "cast float16 -> float32 (the model's dtype)" in report.notes
    assert dst.pos_embed.dtype == torch.float32
    torch.testing.assert_close(dst.pos_embed, fp16["pos_embed"].float())
    bf = model(num_classes=4).to(torch.bfloat16)
    eva_core.load_checkpoint(bf, path, strict=True)
    assert bf.pos_embed.dtype == torch.bfloat16


def test_our_safetensors_round_trip_exactly(tmp_path):
    src = model(num_classes=4, use_rel_pos_bias=True, init_values=0.1)
    path = save_atomic(src.state_dict(), tmp_path / "w.safetensors")
    dst = model(num_classes=4, use_rel_pos_bias=True, init_values=0.1)
    assert eva_core.load_checkpoint(dst, path, strict=True).ok
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    built = eva_core.create_model("eva_giant_patch14_224", checkpoint_path=str(path), num_classes=4,
                                  use_rel_pos_bias=True, init_values=0.1, mlp_ratio=4.0, **SMALL)
    assert built.load_report.ok and torch.equal(built.pos_embed, src.pos_embed)


def test_patch14_to_16_on_load_and_with_the_converter_cli(tmp_path):
    """eva_psz14to16: kernel bicubically 14 -> 16, grid resized to img_size / 16."""
    src = model(patch_size=14, img_size=56, num_classes=0)  # 4x4 grid
    path = tmp_path / "eva_psz14.pt"
    torch.save({"model": src.state_dict()}, path)
    want_w = resample_patch_embed(src.patch_embed.proj.weight, [16, 16], interpolation="bicubic",
                                  antialias=True)
    want_pos = resample_abs_pos_embed(src.pos_embed, [3, 3], [4, 4], num_prefix_tokens=1)

    dst = model(patch_size=16, img_size=48, num_classes=0)  # 3x3 grid
    report = eva_core.load_checkpoint(dst, path, strict=True)
    assert "patch_embed.proj.weight: kernel (14, 14) -> (16, 16)" in report.notes
    torch.testing.assert_close(dst.patch_embed.proj.weight, want_w)
    torch.testing.assert_close(dst.pos_embed, want_pos)

    out = tmp_path / "eva_psz14to16.safetensors"
    rc = convert_checkpoint.main([str(path), str(out), "--patch-size", "16", "--img-size", "48"])
    assert rc == 0
    conv = eva_core.checkpoint.load_file(out)
    assert conv["patch_embed.proj.weight"].shape == (48, 3, 16, 16) and conv["pos_embed"].shape == (1, 10, 48)
    torch.testing.assert_close(conv["patch_embed.proj.weight"], want_w)
    torch.testing.assert_close(conv["pos_embed"], want_pos)
    dst2 = model(patch_size=16, img_size=48, num_classes=0)
    assert eva_core.load_checkpoint(dst2, out, strict=True).notes == []  # already in shape: nothing to adapt


def test_converter_rejects_bad_arguments_and_pickled_code(tmp_path, capsys):
    path = tmp_path / "m.pt"
    torch.save({"model": model(patch_size=14, img_size=56).state_dict()}, path)
    with pytest.raises(ValueError, match="img_size 50 is not a multiple of patch size 16"):
        convert_checkpoint.main([str(path), str(tmp_path / "o.pth"), "--patch-size", "16",
                                 "--img-size", "50"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"model": Evil()}, f, protocol=2)
    with pytest.raises(CheckpointFormatError, match="allow_pickle=True"):
        eva_core.load_checkpoint(model(), bad)
    assert "pwned" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="no tensors found; top-level keys are \\['epoch'\\]"):
        eva_core.load_checkpoint(model(), {"epoch": 3})


def test_detectron2_vitdet_backbone_layout_and_mim_file_into_a_windowed_backbone(monkeypatch):
    # eva_core's own layouts only: a project imported earlier in this process may have registered more
    # (vitdet_eva's detectron2_detector claims this file; tests/test_vitdet_model.py covers that path)
    monkeypatch.setattr(layouts, "_LAYOUTS", {k: v for k, v in layouts._LAYOUTS.items()
                                              if v.detect.__module__.startswith("eva_core.")})
    det_kw = dict(num_classes=0, global_pool="", class_token=False, pos_embed_cls_slot=True, use_rel_pos=True,
                  window_size=4, window_block_indexes=[0], use_post_transformer_norm=False, img_size=32)
    src = model(**det_kw)
    sd = {"backbone.net." + k: v for k, v in src.state_dict().items()}
    sd["backbone.simfp_2.0.weight"] = torch.randn(4, 4)
    sd["roi_heads.box_predictor.0.cls_score.weight"] = torch.randn(3, 4)
    assert src.pos_embed.shape == (1, 65, 48)  # CLS slot kept, as in the EVA detection files
    dst = model(**det_kw)
    assert eva_core.load_checkpoint(dst, {"model": sd}, strict=True).layout == "detectron2"
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst.forward_features(x), src.forward_features(x))

    # the MIM encoder into the detection backbone: cls_token unused, rel-pos tables stay zero-init
    report = eva_core.load_checkpoint(model(**det_kw), mim_state_dict())
    assert report.unexpected == ["cls_token", "norm.bias", "norm.weight"]
    assert all("rel_pos" in k for k in report.missing) and len(report.missing) == 4

    # a detector trained at another size: global-block decomposed tables are resized linearly
    big = model(**{**det_kw, "rel_pos_input_size": (16, 16)})
    report = eva_core.load_checkpoint(dst, big.state_dict(), strict=True)
    assert "blocks.1.attn.rel_pos_h: length 31 -> 15" in report.notes


def test_shared_relative_position_table_seeds_every_block_and_tables_resize():
    shared = model(use_shared_rel_pos_bias=True, num_classes=0)
    with torch.no_grad():
        shared.rel_pos_bias.relative_position_bias_table.normal_()
    per_block = model(use_rel_pos_bias=True, num_classes=0)
    report = eva_core.load_checkpoint(per_block, shared.state_dict(), strict=True)
    assert any("copied into 2 per-block tables" in n for n in report.notes)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(per_block.forward_features(x), shared.forward_features(x))
    bigger = model(use_rel_pos_bias=True, num_classes=0, img_size=40)
    report = eva_core.load_checkpoint(bigger, per_block.state_dict(), strict=True)
    t = bigger.blocks[0].attn.relative_position_bias_table
    assert t.shape == ((2 * 10 - 1) ** 2 + 3, 3)
    torch.testing.assert_close(t[-3:], per_block.blocks[0].attn.relative_position_bias_table[-3:])


def test_qkv_bias_layout_is_split_into_q_and_v_bias():
    src = model(num_classes=0)
    sd = dict(src.state_dict())
    q, v = sd.pop("blocks.0.attn.q_bias"), sd.pop("blocks.0.attn.v_bias")
    sd["blocks.0.attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    dst = model(num_classes=0)
    assert eva_core.load_checkpoint(dst, sd, strict=True).ok
    torch.testing.assert_close(dst.blocks[0].attn.v_bias, v)


def test_encoder_checkpoints_load_into_task_models_that_wrap_the_encoder():
    class Pretrainer(torch.nn.Module):  # an MIM-style wrapper: encoder + lm_head + a frozen teacher
        def __init__(self):
            super().__init__()
            self.encoder = model(num_classes=0, use_mask_token=True, use_fc_norm=False, global_pool="token")
            self.lm_head = torch.nn.Linear(48, 8)
            self.teacher = torch.nn.Linear(3, 3)

    sd = mim_state_dict()
    pre = Pretrainer()
    report = eva_core.load_checkpoint(pre, {"model": sd}, strict=True)
    assert report.ok and "encoder.mask_token" in report.loaded and "lm_head.weight" in report.loaded
    torch.testing.assert_close(pre.lm_head.weight, sd["lm_head.weight"])
    torch.testing.assert_close(pre.encoder.blocks[0].attn.v_bias, sd["blocks.0.attn.v_bias"])
    assert not any(k.startswith("teacher.") for k in report.missing)
    # the wrapper's own checkpoint (prefixed keys) round-trips too
    again = Pretrainer()
    assert eva_core.load_checkpoint(again, pre.state_dict(), strict=True).ok
    torch.testing.assert_close(again.encoder.pos_embed, pre.encoder.pos_embed)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model(num_classes=5)

    clf = Classifier()
    report = eva_core.load_checkpoint(clf, sd)
    assert report.missing == ["net.head.bias", "net.head.weight"] and report.unexpected == []
    torch.testing.assert_close(clf.net.fc_norm.weight, sd["norm.weight"])


# ----------------------------------------------------------------------------- layout registry
def test_builtin_layouts_are_registered_through_the_public_api_in_detection_order():
    # projects imported by other tests of this process (video/, ...) add theirs; built-ins keep their order
    builtin = [n for n in eva_core.list_layouts()
               if layouts.get_layout(n).detect.__module__.startswith("eva_core.")]
    assert builtin == ["open_clip", "detectron2", "eva_clip", "eva_mim", "eva"]
    assert layouts.get_layout("detectron2").priority == 30
    with pytest.raises(ValueError, match="'eva' is already registered"):
        eva_core.register_layout("eva", detect=lambda sd: True, convert=lambda sd, ctx: sd)
    with pytest.raises(ValueError, match="unknown checkpoint layout 'nope'; registered: \\[.*'open_clip'"):
        eva_core.load_checkpoint(model(), model().state_dict(), layout="nope")


def test_detection_takes_the_highest_priority_then_the_highest_score():
    def keep(sd, ctx):
        return dict(sd)

    try:
        layouts.register_layout("scored_low", detect=lambda sd: 0.2 if "x.w" in sd else 0, convert=keep,
                                priority=40)
        layouts.register_layout("scored_high", detect=lambda sd: 0.9 if "x.w" in sd else 0, convert=keep,
                                priority=40)
        assert detect_layout({"x.w": torch.zeros(1)}) == "scored_high"
        # detect() returning 0 takes a layout out of the running
        assert detect_layout({"blocks.0.norm1.weight": torch.zeros(1)}) == "eva"
        layouts.register_layout("scored_low", detect=lambda sd: True, convert=keep, priority=45, replace=True)
        assert detect_layout({"x.w": torch.zeros(1)}) == "scored_low"
    finally:
        layouts.unregister_layout("scored_low")
        layouts.unregister_layout("scored_high")
    assert "scored_low" not in eva_core.list_layouts()


def test_a_project_layout_registered_outside_eva_core_loads_a_video_checkpoint_into_an_eva_model(tmp_path):
    import project_layout_fixture as project  # registers the layout on import, as a project package would

    src = model(num_classes=0)
    path = tmp_path / "toy_video_project.pth"
    torch.save({"model_ema": project.to_project_checkpoint(src.state_dict(), tubelet=2)}, path)
    saved = torch.load(path)["model_ema"]
    assert saved["net.tubelet_embed.weight"].shape == (48, 3, 2, 4, 4)
    assert "net.layers.1.attn.qkv.weight" in saved

    dst = model(num_classes=0)
    report = eva_core.load_checkpoint(dst, path, min_loaded=1.0)
    assert report.layout == project.LAYOUT and f"layout {project.LAYOUT}" in str(report)
    assert report.ok and len(report.loaded) == report.total == len(src.state_dict())
    collapsed = "net.patch_embed.proj.weight: tubelet kernel of 2 frames collapsed to an image kernel"
    assert collapsed in report.notes
    assert "1 keys outside prefix 'net.' ignored" in report.notes  # the project's own video head
    torch.testing.assert_close(dst.patch_embed.proj.weight, src.patch_embed.proj.weight)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))
    # the name can be given instead of detected
    assert eva_core.load_checkpoint(model(num_classes=0), saved, layout=project.LAYOUT).ok


# ----------------------------------------------------------------------------- our training checkpoints
class _Classifier(torch.nn.Module):  # what the trainer saves for the classification wrapper: net.* keys
    def __init__(self, **kw):
        super().__init__()
        self.net = model(**kw)


def test_training_checkpoint_of_a_wrapper_loads_into_the_bare_encoder_and_back(tmp_path):
    clf = _Classifier(num_classes=5)
    path = save_atomic({"model": clf.state_dict(), "iteration": 10}, tmp_path / "model_final.pth")
    bare = model(num_classes=5)
    report = eva_core.load_checkpoint(bare, path, strict=True)
    assert report.prefix == "net." and len(report.loaded) == report.total == len(bare.state_dict())
    assert "encoder weights read from under 'net.'" in report.notes
    torch.testing.assert_close(bare.blocks[1].mlp.fc2.weight, clf.net.blocks[1].mlp.fc2.weight)

    # a deeper wrapper prefix of another project (e.g. a distillation student) works the same way
    deep = {"student.net." + k: v for k, v in clf.net.state_dict().items()}
    deep["teacher_proj.weight"] = torch.randn(3, 3)
    report = eva_core.load_checkpoint(model(num_classes=5), deep)
    assert report.prefix == "student.net." and report.ok
    assert "1 keys outside 'student.net.' ignored" in report.notes
    # the bare encoder's file into the wrapper
    other = _Classifier(num_classes=5)
    report = eva_core.load_checkpoint(other, bare.state_dict(), strict=True)
    assert report.prefix == "" and report.ok
    torch.testing.assert_close(other.net.pos_embed, clf.net.pos_embed)


def test_load_report_is_one_log_line_with_counts_and_names():
    clf = model(num_classes=5)
    report = eva_core.load_checkpoint(clf, mim_state_dict())
    line = str(report)
    assert "\n" not in line
    n = len(clf.state_dict())
    assert line.startswith("<state_dict>: layout eva_mim, ")
    assert f"loaded {n - 2}/{n} tensors" in line and report.loaded_fraction == pytest.approx((n - 2) / n)
    assert "missing (2): ['head.bias', 'head.weight']" in line and "unexpected (0)" in line
    assert "mismatched (0)" in line
    assert "dropped (3): ['lm_head.bias', 'lm_head.weight', 'mask_token']" in line
    assert "notes: norm.* renamed to fc_norm.*" in line


def test_min_loaded_refuses_partial_loads_naming_the_file_and_the_first_missing_keys(tmp_path):
    src = model(num_classes=0)
    partial = {k: v for k, v in src.state_dict().items() if not k.startswith("blocks.1.")}
    path = save_atomic(partial, tmp_path / "partial.safetensors")
    dst = model(num_classes=0)
    before = dst.blocks[0].attn.qkv.weight.clone()
    with pytest.raises(CheckpointMismatchError, match=r"partial.safetensors: loaded \d+/\d+ tensors of Eva "
                                                      r".* first missing: \['blocks.1.attn.proj.bias'"):
        eva_core.load_checkpoint(dst, path, min_loaded=1.0)
    assert torch.equal(dst.blocks[0].attn.qkv.weight, before)  # a refused load changes nothing
    with pytest.raises(CheckpointMismatchError,
                       match=r"encoder tensors of Eva not loaded \(min_loaded='encoder'\)"):
        eva_core.load_checkpoint(dst, path, min_loaded="encoder")
    assert eva_core.load_checkpoint(dst, path, min_loaded=0.5).loaded_fraction > 0.5
    assert len(eva_core.load_checkpoint(dst, path).missing) > 0  # the default stays non-strict

    # "encoder" lets a fresh classifier head be missing, and nothing else
    report = eva_core.load_checkpoint(_Classifier(num_classes=7), mim_state_dict(), min_loaded="encoder")
    assert report.missing == ["net.head.bias", "net.head.weight"]
    unrelated = {"decoder.weight": torch.randn(2, 2)}  # used to "load" 0 tensors without a word
    with pytest.raises(CheckpointMismatchError, match="first missing: \\['blocks.0.attn.proj.bias'"):
        eva_core.load_checkpoint(model(num_classes=0), unrelated, min_loaded="encoder")
    with pytest.raises(ValueError, match="min_loaded=2"):
        eva_core.load_checkpoint(dst, path, min_loaded=2)


def test_converter_cli_lists_layouts_and_converts_with_a_project_layout(tmp_path, capsys):
    assert convert_checkpoint.main(["--import", "project_layout_fixture", "--list-layouts"]) == 0
    listed = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in listed]
    assert names.index("toy_video_project") < names.index("open_clip")  # listed in detection order
    import project_layout_fixture as project

    src = model(num_classes=0)
    path = tmp_path / "video.pth"
    torch.save({"model": project.to_project_checkpoint(src.state_dict(), tubelet=4)}, path)
    out = tmp_path / "image.safetensors"
    assert convert_checkpoint.main([str(path), str(out), "--layout", project.LAYOUT]) == 0
    assert f"layout {project.LAYOUT}" in capsys.readouterr().out
    conv = eva_core.checkpoint.load_file(out)
    torch.testing.assert_close(conv["patch_embed.proj.weight"], src.patch_embed.proj.weight)
    assert conv.keys() == src.state_dict().keys()


def test_data_parallel_module_prefix_is_unwrapped_in_the_one_unwrap_function():
    src = model(num_classes=4)
    ddp = {"state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "epoch": 3}
    assert layouts.unwrap_state_dict(ddp).keys() == src.state_dict().keys()
    dst = model(num_classes=4)
    assert eva_core.load_checkpoint(dst, ddp, strict=True).ok
    torch.testing.assert_close(dst.head.weight, src.head.weight)
