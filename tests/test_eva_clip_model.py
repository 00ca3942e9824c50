"""EVA-CLIP model and checkpoints (issue 11, Deliver 1-2): docs/recipes/clip.md#eva-clip-model."""
from __future__ import annotations

import math
import os

import open_clip
import pytest
import torch
from open_clip.loss import ClipLoss

import eva_core
from clip.model import (
    EvaCLIP,
    create_eva_clip,
    get_tokenizer,
    register_open_clip_config,
    to_open_clip_state_dict,
    to_released_state_dict,
)
from eva_core.checkpoint import save_atomic
from eva_core.checkpoint.loader import CheckpointMismatchError
from eva_core.models.eva import Eva

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_VISION = dict(img_size=28, patch_size=14, embed_dim=48, depth=2, num_heads=3, mlp_ratio=4.0)


def _tiny(seed: int = 0, **vision) -> EvaCLIP:
    torch.manual_seed(seed)
    return create_eva_clip("eva_clip_tiny", vision_cfg=vision).eval()


def _batch(n: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    texts = ["a photo of a cat", "a red square", "two dogs on grass", "a diagram"][:n]
    return {"image": torch.randn(n, 3, 28, 28, generator=g), "text": get_tokenizer()(texts)}


def _same_outputs(a: EvaCLIP, b: torch.nn.Module, batch) -> tuple[float, float]:
    with torch.no_grad():
        di = (a.encode_image(batch["image"]) - b.encode_image(batch["image"])).abs().max().item()
        dt = (a.encode_text(batch["text"]) - b.encode_text(batch["text"])).abs().max().item()
    return di, dt


def test_tokenizer_works_offline_with_openai_bpe_ids():
    tok = get_tokenizer()(["a photo of a cat"])
    assert tok.shape == (1, 77) and tok.dtype == torch.long
    # OpenAI CLIP's BPE: <start_of_text>=49406, a=320, photo=1125, of=539, cat=2368, <end_of_text>=49407
    assert tok[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok[0, 7:].eq(0).all()


def test_training_loss_equals_open_clip_clip_loss_on_the_same_features():
    model = _tiny()
    batch = _batch()
    with torch.no_grad():
        img = model.encode_image(batch["image"], normalize=True)
        txt = model.encode_text(batch["text"], normalize=True)
        expected = ClipLoss()(img, txt, model.logit_scale.exp())
    model.train()
    # no dropout / drop path in the tiny config: train mode computes the same features
    out = model(batch)
    assert set(out) == {"loss_clip", "logit_scale"}
    assert torch.allclose(out["loss_clip"], expected, atol=1e-6)
    assert out["loss_clip"].requires_grad
    out["loss_clip"].backward()
    assert model.visual.blocks[0].attn.qkv.weight.grad is not None
    assert model.text.token_embedding.weight.grad is not None


def test_logit_scale_is_clamped_at_100_with_no_gradient_above_it():
    model = _tiny().train()
    batch = _batch()
    assert math.isclose(model.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    out = model(batch)
    assert math.isclose(out["logit_scale"].item(), 100.0, rel_tol=1e-6)
    out["loss_clip"].backward()
    assert model.logit_scale.grad.item() == 0.0
    model.clamp_logit_scale_()
    assert math.isclose(model.logit_scale.item(), math.log(100.0), rel_tol=1e-7)
    # below the clamp the temperature learns
    model.zero_grad()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
    model(batch)["loss_clip"].backward()
    assert model.logit_scale.grad.item() != 0.0


def test_eval_mode_returns_normalised_features_and_training_needs_both_inputs():
    model = _tiny()
    out = model(_batch())
    assert out["image_features"].shape == (4, 32) and out["text_features"].shape == (4, 32)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(4), atol=1e-5)
    assert set(model({"image": _batch()["image"]})) == {"image_features", "logit_scale"}
    with pytest.raises(KeyError, match="lacks \\['text'\\]"):
        model.train()({"image": _batch()["image"]})


def test_configs_give_eva_clip_g_sizes_and_reject_fixed_tower_arguments():
    with torch.device("meta"):
        g = create_eva_clip("eva_clip_g14")
    assert g.visual.embed_dim == 1408 and len(g.visual.blocks) == 40
    assert g.visual.patch_embed.proj.kernel_size == (14, 14)
    assert g.visual.head.out_features == 1024 and g.text.text_projection.shape == (768, 1024)
    assert g.text.context_length == 77 and g.text.vocab_size == 49408
    assert len(g.text.transformer.resblocks) == 12
    n_vis = sum(p.numel() for p in g.visual.parameters())
    n_txt = sum(p.numel() for p in g.text.parameters())
    # recipe page: EVA-CLIP about 1.1B parameters (vision EVA-g 1.01B incl. projection, text 124M)
    assert (n_vis, n_txt) == (1_012_588_928, 123_846_912)
    with pytest.raises(ValueError, match="global_pool"):
        EvaCLIP(32, dict(TINY_VISION, global_pool="avg"), dict(width=32, heads=2, layers=1))
    with pytest.raises(ValueError, match="unknown EVA-CLIP model"):
        create_eva_clip("eva_clip_huge")


def test_vision_tower_initialises_from_a_tiny_mim_checkpoint(tmp_path):
    torch.manual_seed(3)
    mim = Eva(**TINY_VISION, num_classes=0, global_pool="token", use_mask_token=True, use_fc_norm=False)
    sd = dict(mim.state_dict())
    sd["lm_head.weight"], sd["lm_head.bias"] = torch.randn(16, 48), torch.randn(16)
    path = save_atomic({"model": sd}, tmp_path / "mim.pth")
    model = create_eva_clip("eva_clip_tiny", vision_init=path)
    report = model.vision_init_report
    assert report.layout == "eva_mim"
    assert report.missing == ["head.bias", "head.weight"]  # the new projection
    assert set(report.dropped) == {"mask_token", "lm_head.weight", "lm_head.bias"}
    for k, v in mim.state_dict().items():
        if k != "mask_token":
            assert torch.equal(model.visual.state_dict()[k], v), k
    # a file that is not this encoder is refused, naming the file
    del sd["blocks.1.attn.qkv.weight"]
    save_atomic(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointMismatchError, match="broken.pth.*blocks.1.attn.qkv.weight"):
        create_eva_clip("eva_clip_tiny", vision_init=tmp_path / "broken.pth")


@pytest.mark.parametrize("inner_norm", [False, True], ids=["eva01", "inner_attn_ln"])
def test_released_layout_round_trips_with_and_without_inner_attn_ln(tmp_path, inner_norm):
    vision = {"attn_inner_norm": True} if inner_norm else {}
    src = _tiny(0, **vision)
    released = to_released_state_dict(src)
    assert "token_embedding.weight" in released and "visual.head.weight" in released
    assert any(".inner_attn_ln." in k for k in released) == inner_norm
    path = save_atomic({"module": {k: v.half() for k, v in released.items()}}, tmp_path / "eva_clip.pt")
    dst = _tiny(1, **vision)
    report = eva_core.load_checkpoint(dst, path, strict=True)
    assert report.layout == "eva_clip_release" and report.ok and report.loaded_fraction == 1.0
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v.half().float()), k


def test_inner_attn_ln_file_into_a_tower_without_it_is_refused_naming_the_option():
    released = to_released_state_dict(_tiny(0, attn_inner_norm=True))
    with pytest.raises(ValueError, match="inner_attn_ln.*attn_inner_norm"):
        eva_core.load_checkpoint(_tiny(1), released)


def test_split_q_k_v_projections_of_later_releases_are_fused_into_qkv():
    src = _tiny(0, attn_inner_norm=True)
    released = to_released_state_dict(src)
    for k in [k for k in released if k.endswith("attn.qkv.weight")]:
        q, kk, v = released.pop(k).chunk(3)
        base = k[: -len("qkv.weight")]
        released.update({base + "q_proj.weight": q, base + "k_proj.weight": kk, base + "v_proj.weight": v})
    dst = _tiny(1, attn_inner_norm=True)
    report = eva_core.load_checkpoint(dst, released, strict=True)
    assert any("fused into qkv in 2 blocks" in n for n in report.notes)
    assert _same_outputs(src, dst, _batch()) == (0.0, 0.0)


def test_openai_clip_text_weights_load_into_the_text_tower():
    src = _tiny(0)
    text = {k[len("text."):]: v for k, v in src.state_dict().items() if k.startswith("text.")}
    # an OpenAI file also holds its own ViT (conv1, transformer ...) under visual.: not an EVA encoder
    openai = {**text, "logit_scale": torch.tensor(4.0), "visual.conv1.weight": torch.zeros(8, 3, 14, 14),
              "visual.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(24, 8)}
    dst = _tiny(1)
    vision_before = {k: v.clone() for k, v in dst.visual.state_dict().items()}
    report = eva_core.load_checkpoint(dst, openai)
    assert report.layout == "openai_clip_text"
    assert any("2 visual.* keys left out" in n for n in report.notes)
    assert len(report.loaded) == len(text) + 1 and not report.unexpected
    assert dst.logit_scale.item() == 4.0
    with torch.no_grad():
        assert torch.equal(dst.encode_text(_batch()["text"]), src.encode_text(_batch()["text"]))
    assert all(torch.equal(v, vision_before[k]) for k, v in dst.visual.state_dict().items())


@pytest.mark.parametrize("inner_norm", [False, True], ids=["eva01", "inner_attn_ln"])
def test_open_clip_loads_the_tiny_export_strictly_with_equal_embeddings(tmp_path, inner_norm):
    model = _tiny(0, **({"attn_inner_norm": True} if inner_norm else {}))
    if inner_norm:
        with torch.no_grad():  # non-trivial norms, so that a misplaced norm would show
            for blk in model.visual.blocks:
                blk.attn.norm.weight.uniform_(0.5, 1.5)
                blk.attn.norm.bias.normal_()
    name = f"EvaCLIP-tiny-test-{int(inner_norm)}"
    register_open_clip_config(name, model, tmp_path)
    oc = open_clip.create_model(name, load_weights=False)
    result = oc.load_state_dict(to_open_clip_state_dict(model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    di, dt = _same_outputs(model, oc.eval(), _batch())
    assert di <= 1e-5 and dt <= 1e-5
    # and back: open_clip's own state dict loads into EvaCLIP through the registered layout
    back = _tiny(5, **({"attn_inner_norm": True} if inner_norm else {}))
    report = eva_core.load_checkpoint(back, oc.state_dict(), strict=True)
    assert report.layout == "open_clip_eva"
    assert _same_outputs(model, back, _batch()) == (0.0, 0.0)


def test_export_tool_writes_a_file_open_clip_loads(tmp_path, capsys):
    from tools.export_open_clip import main

    model = _tiny(0)
    save_atomic({"model": model.state_dict()}, tmp_path / "ours.pth")
    out = tmp_path / "tiny_open_clip.safetensors"
    assert main([str(tmp_path / "ours.pth"), str(out), "--model", "eva_clip_tiny", "--open-clip-name",
                 "EvaCLIP-tiny-tool", "--config-dir", str(tmp_path), "--verify"]) == 0
    assert "layout eva_clip_model" in capsys.readouterr().out
    oc = open_clip.create_model("EvaCLIP-tiny-tool", pretrained=str(out)).eval()
    di, dt = _same_outputs(model, oc, _batch())
    assert di <= 1e-5 and dt <= 1e-5
    # a file missing a tensor stops with status 2
    sd = dict(model.state_dict())
    del sd["text.ln_final.weight"]
    save_atomic(sd, tmp_path / "broken.pth")
    assert main([str(tmp_path / "broken.pth"), str(out), "--model", "eva_clip_tiny",
                 "--open-clip-name", "EvaCLIP-tiny-tool"]) == 2
    assert "text.ln_final.weight" in capsys.readouterr().err


def test_eva_clip_g_export_has_exactly_open_clip_eva01_g14_keys_and_shapes():
    assert "EVA01-g-14" in open_clip.list_models()
    with torch.device("meta"):
        ours = create_eva_clip("eva_clip_g14")
        theirs = open_clip.create_model("EVA01-g-14", load_weights=False, device="meta")
    a = {k: tuple(v.shape) for k, v in to_open_clip_state_dict(ours).items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert sorted(set(a) ^ set(b)) == [] and a == b


def _gather_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    batch = _batch(4)
    half = {k: v[2 * rank: 2 * rank + 2] for k, v in batch.items()}
    result = {}
    for local in (False, True):
        model = _tiny(0)
        model.local_loss, model.gather_with_grad = local, True
        loss = model.train()(half)["loss_clip"]
        loss.backward()
        grads = torch.stack([model.logit_scale.grad, model.visual.head.weight.grad[0, 0]])
        dist.all_reduce(grads)  # what DDP does (sum, then / world)
        result[f"local{int(local)}"] = {"loss": loss.item(), "grad": (grads / 2).flatten().tolist()}
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_gather_features_and_local_loss_keeps_the_full_batch_loss_and_gradient(tmp_path):
    import torch.multiprocessing as mp

    # fork: the workers inherit the imported open_clip / timm instead of importing them again
    mp.start_processes(_gather_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    model = _tiny(0).train()
    loss = model(_batch(4))["loss_clip"]
    loss.backward()
    full_grad = [model.logit_scale.grad.item(), model.visual.head.weight.grad[0, 0].item()]
    # without local loss every rank scores the whole gathered batch: the single-process loss
    for r in ranks:
        assert math.isclose(r["local0"]["loss"], loss.item(), rel_tol=1e-5)
    # with local loss each rank scores its own rows; their mean is the full-batch loss, and the
    # rank-averaged gradient (gathered with gradient) is the full-batch gradient
    mean_loss = (ranks[0]["local1"]["loss"] + ranks[1]["local1"]["loss"]) / 2
    assert math.isclose(mean_loss, loss.item(), rel_tol=1e-5)
    assert ranks[0]["local1"]["grad"] == pytest.approx(full_grad, rel=1e-4, abs=1e-6)


def test_vision_tower_initialises_from_our_own_eva_mim_training_checkpoint(tmp_path):
    from eva_core.mim.model import EvaMIM

    torch.manual_seed(4)
    encoder = Eva(**TINY_VISION, num_classes=0, global_pool="token", use_mask_token=True, use_fc_norm=False)
    mim = EvaMIM(encoder, target_dim=16)
    path = save_atomic({"model": mim.state_dict(), "iteration": 10}, tmp_path / "model_0000010.pth")
    model = create_eva_clip("eva_clip_tiny", vision_init=path)
    assert model.vision_init_report.missing == ["head.bias", "head.weight"]
    with torch.no_grad():
        x = torch.randn(2, 3, 28, 28)
        # same encoder features: the CLS token after the final norm, before the new projection
        ours = model.visual.forward_head(model.visual.forward_features(x), pre_logits=True)
        theirs = encoder.forward_head(encoder.forward_features(x), pre_logits=True)
    assert torch.equal(ours, theirs)
