"""Image-text retrieval R@1/5/10 on Karpathy caption files (docs/recipes/clip.md#image-text-retrieval)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import ToTensor

from clip.model import create_eva_clip, get_tokenizer
from clip.retrieval import evaluate_retrieval, read_karpathy_json, retrieval_recalls
from eva_core.classification.datasets import EvalSetLayoutError

COLOURS = ["red", "green", "blue", "yellow"]
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


def loop_recalls(sim: torch.Tensor, owner: list[int], ks=(1, 5, 10)) -> dict[str, float]:
    """The definition, one query at a time with a full sort."""
    num_images, num_texts = sim.shape
    out = {}
    for k in ks:
        hits = 0
        for i in range(num_images):
            top = torch.argsort(sim[i], descending=True)[:k].tolist()
            hits += any(owner[t] == i for t in top)
        out[f"image_to_text/R@{k}"] = 100.0 * hits / num_images
    for k in ks:
        hits = 0
        for t in range(num_texts):
            top = torch.argsort(sim[:, t], descending=True)[:k].tolist()
            hits += owner[t] in top
        out[f"text_to_image/R@{k}"] = 100.0 * hits / num_texts
    return out


def test_recalls_equal_a_direct_loop_over_queries_on_a_random_matrix():
    g = torch.Generator().manual_seed(0)
    owner = [i for i in range(20) for _ in range(5)]  # 20 images, five captions each, as COCO / Flickr
    sim = torch.randn(20, 100, generator=g)
    sim[torch.tensor(owner), torch.arange(100)] += 1.5  # better than chance, not perfect
    ours = retrieval_recalls(sim, torch.tensor(owner))
    ref = loop_recalls(sim, owner)
    assert ours.keys() - {"mean_recall"} == ref.keys()
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < ours["image_to_text/R@1"] < 100 and 0 < ours["text_to_image/R@1"] < 100
    assert ours["mean_recall"] == pytest.approx(sum(ref.values()) / 6)


def test_an_image_is_a_hit_when_any_of_its_captions_is_retrieved():
    # image 0 owns captions 0 and 1; only caption 1 is its nearest. Image 1 owns caption 2, ranked second.
    sim = torch.tensor([[0.1, 0.9, 0.5],
                        [0.8, 0.2, 0.3]])
    r = retrieval_recalls(sim, torch.tensor([0, 0, 1]), ks=(1, 2))
    assert r["image_to_text/R@1"] == 50.0 and r["image_to_text/R@2"] == 100.0  # image 1: 0.8 > 0.3 > 0.2
    # captions: 0 -> image 1 first (miss at 1), 1 -> image 0 (hit), 2 -> image 0 first (miss at 1)
    assert r["text_to_image/R@1"] == pytest.approx(100 / 3) and r["text_to_image/R@2"] == 100.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"expected \[3\]"):
        retrieval_recalls(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside 0..1"):
        retrieval_recalls(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


def write_karpathy(tmp: Path, name: str = "dataset_coco.json") -> Path:
    """A COCO-style Karpathy file: test images in val2014/, one train image that must be ignored."""
    images = []
    for i, colour in enumerate(COLOURS):
        folder = tmp / "val2014"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), RGB[colour], np.uint8)).save(folder / f"im{i}.jpg")
        images.append({"filepath": "val2014", "filename": f"im{i}.jpg", "split": "test", "cocoid": i,
                       "sentences": [{"raw": f"A {colour} square.", "tokens": []},
                                     {"raw": f"a plain {colour} picture", "tokens": []}]})
    images.insert(2, {"filepath": "train2014", "filename": "missing.jpg", "split": "train",
                      "sentences": [{"raw": "not read"}]})
    path = tmp / name
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


class ColourWordCLIP(nn.Module):
    """Image -> one-hot of its colour; caption -> one-hot of the colour word it contains."""

    def __init__(self):
        super().__init__()
        tok = get_tokenizer()
        self.words = [int(tok([c])[0, 1]) for c in COLOURS]
        self.anchor = nn.Parameter(torch.zeros(1))
        self.context_length = 77

    def encode_image(self, x, normalize=False):
        rgb = (x.mean(dim=(2, 3)) > 0.5).long()
        k = torch.tensor([list(RGB.values()).index(tuple(255 * v for v in row.tolist())) for row in rgb])
        return F.normalize(F.one_hot(k, 4).float() + 1e-3, dim=-1)

    def encode_text(self, t, normalize=False):
        hits = torch.stack([(t == w).any(dim=1) for w in self.words], 1).float()
        return F.normalize(hits + 1e-3, dim=-1)


def test_karpathy_file_reads_the_test_split_with_all_captions(tmp_path):
    data = read_karpathy_json(write_karpathy(tmp_path))
    assert len(data.image_paths) == 4 and data.image_paths[0] == str(tmp_path / "val2014" / "im0.jpg")
    assert data.captions[:2] == ["A red square.", "a plain red picture"]
    assert data.text_to_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(EvalSetLayoutError,
                       match=r"no image of split 'val'; the file has splits \['test', 'train'\]"):
        read_karpathy_json(write_karpathy(tmp_path), split="val")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"split": "test", "filename": "a.jpg", "sentences": [{"x": 1}]}]}))
    with pytest.raises(EvalSetLayoutError,
                       match=r"bad.json: images\[0\] \(a.jpg\) sentences\[0\] has no 'raw'"):
        read_karpathy_json(bad)


def test_end_to_end_on_a_tiny_caption_file(tmp_path):
    path = write_karpathy(tmp_path)
    perfect = evaluate_retrieval(ColourWordCLIP(), path, ToTensor(), batch_size=3)
    assert perfect["num_images"] == 4 and perfect["num_texts"] == 8
    assert all(v == 100.0 for k, v in perfect.items() if "R@" in k)
    # a tiny random EVA-CLIP: numbers equal the definition on its own embeddings
    torch.manual_seed(0)
    model = create_eva_clip("eva_clip_tiny", vision_cfg=dict(img_size=16, patch_size=8)).eval()
    r = evaluate_retrieval(model, path, ToTensor(), batch_size=3)
    data = read_karpathy_json(path)
    with torch.no_grad():
        img = model.encode_image(torch.stack([ToTensor()(Image.open(p).convert("RGB"))
                                              for p in data.image_paths]), normalize=True)
        txt = model.encode_text(get_tokenizer()(data.captions), normalize=True)
    ref = loop_recalls(img @ txt.t(), data.text_to_image.tolist(), ks=(1, 5, 10))
    assert {k: r[k] for k in ref} == pytest.approx(ref)
    assert r["text_to_image/R@5"] == 100.0  # only 4 images: every caption's image is in the top 5
