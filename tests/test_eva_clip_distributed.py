"""EVA-CLIP's contrastive loss across ranks (issue 11, Deliver 3; ``docs/recipes/clip.md#eva-clip-model``).

Two gloo processes each hold half of a batch; the model is wrapped in DDP as the engine wraps it, so
the gradient compared is the one the optimizer applies (DDP's rank average). open_clip's ``ClipLoss``
gathers the features of every rank; with ``gather_with_grad`` the gathered copies carry gradient back
to the rank that made them.
"""
from __future__ import annotations

import os

import pytest
import torch

from clip.model import create_eva_clip, get_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORLD = 2
BATCH = 6  # 3 per rank
SETTINGS = [(gather, local) for gather in (True, False) for local in (False, True)]


def _model():
    torch.manual_seed(0)
    return create_eva_clip("eva_clip_tiny").train()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    texts = ["a photo of a cat", "a red square", "two dogs on grass", "a diagram", "a blue circle",
             "an orange star"]
    return {"image": torch.randn(BATCH, 3, 28, 28, generator=g), "text": get_tokenizer()(texts)}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    per_rank = BATCH // WORLD
    half = {k: v[rank * per_rank: (rank + 1) * per_rank] for k, v in _batch().items()}
    result = {}
    for gather, local in SETTINGS:
        model = _model()
        model.gather_with_grad, model.local_loss = gather, local
        ddp = DistributedDataParallel(model)
        loss = ddp(half)["loss_clip"]
        loss.backward()  # DDP all-reduces and averages the gradients over the ranks
        result[(gather, local)] = {"loss": loss.item(), "grads": _grads(model)}
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("clip_two_ranks")
    # fork: the workers inherit the imported open_clip / timm instead of importing them again
    mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]
    model = _model()
    loss = model(_batch())["loss_clip"]
    loss.backward()
    return ranks, loss.item(), _grads(model)


def _assert_grads_close(got: dict, expected: dict, scale: float = 1.0) -> None:
    assert got.keys() == expected.keys()
    for name, g in expected.items():
        # float32 sums in another order: tolerance relative to the tensor's largest entry
        atol = 1e-4 * float(scale * g.abs().max()) + 1e-8
        torch.testing.assert_close(got[name], scale * g, rtol=1e-4, atol=atol,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.parametrize("local", [False, True], ids=["global_loss", "local_loss"])
def test_gathered_features_with_grad_give_the_full_batch_loss_and_every_gradient(two_ranks, local):
    ranks, full_loss, full_grads = two_ranks
    losses = [r[(True, local)]["loss"] for r in ranks]
    if local:
        # each rank scores its own rows against every gathered feature: the mean is the full loss
        assert sum(losses) / WORLD == pytest.approx(full_loss, rel=1e-5)
        assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    else:
        # each rank scores the whole gathered batch: every rank's loss is the full loss
        assert losses == pytest.approx([full_loss] * WORLD, rel=1e-5)
    for r in ranks:  # every parameter, vision tower, text tower and temperature
        _assert_grads_close(r[(True, local)]["grads"], full_grads)


def _towers(grads: dict) -> dict:
    return {n: g for n, g in grads.items() if n != "logit_scale"}


def test_gathered_features_without_grad_and_global_loss_give_half_the_tower_gradients(two_ranks):
    """open_clip's default (``gather_with_grad=False``): a rank's gathered copies of the other rank's
    features are constants, so the towers' gradient reaches the full loss through the rank's own
    features only, and DDP's rank average applies half the full-batch gradient to the towers; the
    temperature, used whole on every rank, gets its full gradient."""
    ranks, full_loss, full_grads = two_ranks
    assert [r[(False, False)]["loss"] for r in ranks] == pytest.approx([full_loss] * WORLD, rel=1e-5)
    for r in ranks:
        grads = r[(False, False)]["grads"]
        _assert_grads_close(_towers(grads), _towers(full_grads), scale=1 / WORLD)
        _assert_grads_close({"t": grads["logit_scale"]}, {"t": full_grads["logit_scale"]})


def test_local_loss_without_gathered_grad_loses_the_cross_rank_gradient(two_ranks):
    """``local_loss=True`` needs ``gather_with_grad=True``: without it the loss is still the full one
    on average, but the gradient of one rank's rows through the other rank's features is lost."""
    ranks, full_loss, full_grads = two_ranks
    assert sum(r[(False, True)]["loss"] for r in ranks) / WORLD == pytest.approx(full_loss, rel=1e-5)
    got, full = ranks[0][(False, True)]["grads"]["visual.head.weight"], full_grads["visual.head.weight"]
    for scale in (1.0, 1 / WORLD):
        assert (got - scale * full).abs().max() > 0.05 * full.abs().max(), scale
