"""Zero-shot image-text retrieval, R@1/5/10 both ways (``docs/recipes/clip.md#image-text-retrieval``).

Data: the Karpathy split files ``dataset_coco.json`` / ``dataset_flickr30k.json``: ``{"images": [{"filename",
"filepath" (COCO only: ``val2014`` ...), "split": "train" | "val" | "test" | "restval", "sentences":
[{"raw": caption}, ...]}, ...]}``. An image is ``image_root/filepath/filename`` (``image_root/filename``
without ``filepath``). The standard test sets are the 5k COCO and the 1k Flickr30k ``test`` images with
all their captions (about five each).

Scoring, as CLIP's protocol: similarities ``S[i, t]`` between every image and every caption.

- image -> text R@K: the share of images for which *any* of their captions is among the K captions
  most similar to the image;
- text -> image R@K: the share of captions whose own image is among the K images most similar to it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from eva_core.classification.datasets import EvalSetLayoutError
from eva_core.data import build_test_loader

__all__ = ["CaptionFile", "read_karpathy_json", "CaptionImages", "retrieval_recalls", "encode_retrieval",
           "evaluate_retrieval"]


class CaptionFile:
    """One split of a Karpathy caption file.

    Attributes:
        image_paths: image files, in file order.
        captions: every caption of those images, image by image.
        text_to_image: ``LongTensor[num_captions]``, the image index of every caption.
    """

    def __init__(self, image_paths: list[str], captions: list[str], text_to_image: list[int]):
        self.image_paths, self.captions = image_paths, captions
        self.text_to_image = torch.tensor(text_to_image, dtype=torch.long)


def read_karpathy_json(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                       split: str = "test") -> CaptionFile:
    """Images and captions of ``split`` from a ``dataset_coco.json`` / ``dataset_flickr30k.json`` file.

    Args:
        path: the json file.
        image_root: folder the images are under (default: the json's folder).
        split: ``"test"`` (the standard benchmark), ``"val"``, ``"train"`` or ``"restval"``.

    Raises:
        EvalSetLayoutError: not JSON, no ``images`` list, an image without ``filename`` or captions, no
            image of ``split``; the message names the file and the entry.
    """
    path = str(path)
    root = str(image_root) if image_root is not None else os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise EvalSetLayoutError(f"caption file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalSetLayoutError(f"{path}: not a JSON file ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise EvalSetLayoutError(f"{path}: expected a Karpathy split file, an object with an 'images' list")
    paths: list[str] = []
    captions: list[str] = []
    owner: list[int] = []
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or "split" not in entry:
            raise EvalSetLayoutError(f"{path}: images[{i}] has no 'split'")
        if entry["split"] != split:
            continue
        name = entry.get("filename")
        sentences = entry.get("sentences")
        if not isinstance(name, str) or not isinstance(sentences, list) or not sentences:
            raise EvalSetLayoutError(f"{path}: images[{i}] needs a 'filename' and a non-empty 'sentences' "
                                     f"list, got filename={name!r}, sentences={sentences!r}")
        raws = [s.get("raw") if isinstance(s, dict) else None for s in sentences]
        bad = [j for j, r in enumerate(raws) if not isinstance(r, str) or not r.strip()]
        if bad:
            raise EvalSetLayoutError(f"{path}: images[{i}] ({name}) sentences[{bad[0]}] has no 'raw' caption")
        paths.append(os.path.join(root, entry.get("filepath", ""), name))
        captions += [r.strip() for r in raws]
        owner += [len(paths) - 1] * len(raws)
    if not paths:
        splits = sorted({str(e.get("split")) for e in data["images"] if isinstance(e, dict)})
        raise EvalSetLayoutError(f"{path}: no image of split {split!r}; the file has splits {splits}")
    return CaptionFile(paths, captions, owner)


class CaptionImages(Dataset):
    """The images of a :class:`CaptionFile` as ``{"image", "index"}`` samples (a missing or broken file is
    an error: dropping an image would shift every caption's target)."""

    def __init__(self, image_paths: Sequence[str], transform: Callable | None = None):
        self.image_paths, self.transform = list(image_paths), transform

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.image_paths[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError) as e:
            raise EvalSetLayoutError(f"retrieval image {path}: {type(e).__name__}: {e}") from e
        return {"image": self.transform(img) if self.transform is not None else to_tensor(img),
                "index": index}


def retrieval_recalls(similarity: torch.Tensor, text_to_image: torch.Tensor,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (percent) in both directions from an image x text similarity matrix.

    Args:
        similarity: ``[num_images, num_texts]``.
        text_to_image: ``[num_texts]``, the image of every caption.
        ks: the K values.

    Returns:
        ``{"image_to_text/R@K": .., "text_to_image/R@K": .., ..., "mean_recall": mean of all}``.
    """
    num_images, num_texts = similarity.shape
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image has shape {list(text_to_image.shape)}, expected [{num_texts}]")
    if num_texts and (int(text_to_image.min()) < 0 or int(text_to_image.max()) >= num_images):
        raise ValueError(f"text_to_image holds image indices outside 0..{num_images - 1}")
    sim = similarity.float()
    text_to_image = text_to_image.to(sim.device)
    owns = text_to_image[None, :] == torch.arange(num_images, device=sim.device)[:, None]  # [I, T]
    # rank of an item = how many candidates score strictly higher (ties count in its favour)
    best_caption = sim.masked_fill(~owns, float("-inf")).max(dim=1).values  # [I]
    i2t_rank = (sim > best_caption[:, None]).sum(dim=1)
    own_score = sim.gather(0, text_to_image[None, :]).squeeze(0)  # [T]
    t2i_rank = (sim > own_score[None, :]).sum(dim=0)
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_to_text/R@{k}"] = 100.0 * int((i2t_rank < k).sum()) / max(num_images, 1)
    for k in ks:
        out[f"text_to_image/R@{k}"] = 100.0 * int((t2i_rank < k).sum()) / max(num_texts, 1)
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


@torch.no_grad()
def encode_retrieval(model: nn.Module, tokenizer: Callable, data: CaptionFile, transform: Callable | None,
                     *, batch_size: int = 64, device: str | torch.device | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image ``[I, D]`` and caption ``[T, D]`` embeddings of a caption file."""
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        images = [model.encode_image(b["image"].to(device), normalize=True)
                  for b in build_test_loader(CaptionImages(data.image_paths, transform), batch_size)]
        texts = [model.encode_text(tokenizer(data.captions[s:s + batch_size]).to(device), normalize=True)
                 for s in range(0, len(data.captions), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(images).float(), torch.cat(texts).float()


def evaluate_retrieval(model: nn.Module, caption_file: str | os.PathLike, transform: Callable | None, *,
                       tokenizer: Callable | None = None, image_root: str | os.PathLike | None = None,
                       split: str = "test", batch_size: int = 64) -> dict[str, float]:
    """Zero-shot R@1/5/10 both ways of a CLIP model on a Karpathy caption file (see the module docstring).

    Args:
        model: CLIP model with ``encode_image`` / ``encode_text`` (``normalize=True``).
        caption_file: ``dataset_coco.json`` / ``dataset_flickr30k.json``.
        transform: the model's eval image transform.
        tokenizer: the model's tokenizer (default: open_clip's, with the model's context length).
        image_root: folder of the images (default: the json's folder).
        split: the Karpathy split.
        batch_size: images / captions per forward.
    """
    if tokenizer is None:
        import open_clip

        tokenizer = open_clip.SimpleTokenizer(context_length=getattr(model, "context_length", 77))
    data = read_karpathy_json(caption_file, image_root, split)
    images, texts = encode_retrieval(model, tokenizer, data, transform, batch_size=batch_size)
    out = retrieval_recalls(images @ texts.t(), data.text_to_image)
    out.update(num_images=len(data.image_paths), num_texts=len(data.captions))
    return out
