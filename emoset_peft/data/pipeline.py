"""From dataset rows to model batches: decode each image once, augment whole batches as tensors.

Decoding a web JPEG costs more than a small ViT's forward pass on a GPU, and a low-data study
revisits the same few hundred images for hundreds of steps and dozens of cells. So each image is
decoded once per cache key into a uint8 square at ``R = image_size / crop_ratio`` pixels (256 for
224 and the default 0.875: the standard eval resize; both come from the backbone's family, see
``models.backbones.input_spec_for``), stored in a memory-mapped ``.npy`` under the cache folder and shared by
epochs, cells and processes. A JPEG at least twice as large as needed is decoded at 1/2, 1/4 or
1/8 scale in the DCT domain (PIL ``draft``): for R = 37 (a 32 px model) and 300-640 px photos
that halves the decode time; smaller images are decoded in full. From there:

- eval = centre crop ``image_size`` of that square  == Resize(R) + CenterCrop(image_size);
- train = RandomResizedCrop(image_size) + horizontal flip on the square, done per batch on the
  device the model is on, from a generator seeded by (seed, step): a batch is a pure function of
  its step number, which makes resume exact and multi-process sharding trivial.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from emoset_peft.data.decode_cache import load_or_decode
from emoset_peft.data.images import CorruptImageError, open_image
from emoset_peft.models.families import DEFAULT_EVAL_CROP_RATIO

log = logging.getLogger(__name__)

# image_size / resize size, e.g. 224 / 256; a family may set its own (InputSpec.crop_ratio).
EVAL_CROP_RATIO = DEFAULT_EVAL_CROP_RATIO
SLICE_ATTRIBUTES = ("facial_expression", "brightness", "scene", "human_action")


def cache_resolution(image_size: int, crop_ratio: float = EVAL_CROP_RATIO) -> int:
    """Side of the cached square: the eval resize, which also leaves a margin for train crops."""
    return int(round(image_size / crop_ratio))


@dataclass
class DecodedImages:
    """One split's images decoded to uint8 squares, with what metrics need beside them."""

    pixels: np.ndarray  # uint8 [N, R, R, 3], usually a read-only memmap
    labels: np.ndarray  # int64 [N]
    image_ids: list[str]
    attributes: dict[str, list] = field(default_factory=dict)  # column -> N values, for slices
    attribute_labels: dict[str, list[str]] = field(default_factory=dict)  # ClassLabel index -> name
    skipped: list[str] = field(default_factory=list)  # image paths that could not be decoded
    cache_key: str = ""  # the decode cache's key of the split ("" when not from decode_split)

    def __len__(self) -> int:
        return len(self.labels)


def decode_split(
    split,
    image_size: int,
    *,
    crop_ratio: float = EVAL_CROP_RATIO,
    cache_dir: str | Path | None = None,
    skip_corrupt: bool = True,
    workers: int = 2,
    desc: str = "decoding",
    show_progress: bool = True,
) -> DecodedImages:
    """Decode every image of a ``datasets`` split once (or load the cached result).

    The cache key covers the image paths with their sizes and mtimes and the resolution, so an
    image replaced on disk is decoded again. A corrupt image raises ``CorruptImageError`` naming
    its path, or with ``skip_corrupt`` is left out and listed in ``skipped``.
    """
    resolution = cache_resolution(image_size, crop_ratio)
    paths = [
        _image_path(row)
        for row in split.select_columns("image").cast_column("image", _undecoded_image_feature())[
            "image"
        ]
    ]
    pixels, meta = load_or_decode(
        paths,
        resolution,
        image_size,
        cache_dir,
        lambda path: decode_square(path, resolution, crop_size=image_size),
        label=str(getattr(split, "split", "") or ""),
        workers=workers,
        desc=desc,
        show_progress=show_progress,
    )
    failed = {int(i): reason for i, reason in meta["failed"].items()}
    if failed and not skip_corrupt:
        _, reason = next(iter(sorted(failed.items())))
        raise CorruptImageError(
            f"{len(failed)} image(s) in this split cannot be decoded, first: {reason} "
            "(set data.skip_corrupt=true to leave them out)"
        )
    keep = np.array([i for i in range(len(paths)) if i not in failed], dtype=np.int64)
    if failed:
        log.warning(
            "skipped %d undecodable image(s), e.g. %s", len(failed), next(iter(failed.values()))
        )
    # The metadata as plain lists in one Arrow pass: indexing split[name] per row re-reads the
    # column each time (quadratic: 1 s for 256 images, hours for EmoSet's 17,716 test images).
    names = [name for name in SLICE_ATTRIBUTES if name in split.column_names]
    table = split.select_columns(["label", "image_id", *names]).to_dict()
    labels = np.asarray(table["label"], dtype=np.int64)[keep]
    attributes = {name: [table[name][i] for i in keep] for name in names}
    pixels = pixels if len(keep) == len(paths) else pixels[keep]  # copy only when something failed
    attribute_labels = {
        name: list(split.features[name].names)
        for name in names
        if hasattr(split.features[name], "names")
    }
    return DecodedImages(
        pixels=pixels,
        labels=labels,
        image_ids=[table["image_id"][i] for i in keep],
        attributes=attributes,
        attribute_labels=attribute_labels,
        skipped=[paths[i] for i in sorted(failed)],
        cache_key=str(meta.get("key", "")),
    )


def _undecoded_image_feature():
    import datasets

    return datasets.Image(decode=False)


def _image_path(image_field) -> str:
    path = image_field.get("path") if isinstance(image_field, dict) else None
    if not path:
        raise ValueError(
            "image column rows must carry a file path (load the split with load_emoset)"
        )
    return path


def decode_square(path: str, resolution: int, crop_size: int | None = None) -> np.ndarray:
    """torchvision's ``Resize(R)`` + ``CenterCrop(R)`` of an image file: uint8 [R, R, 3].

    Same geometry as torchvision (long side truncated, offsets rounded half to even) and the same
    PIL bilinear filter, so an image smaller than 2R gives torchvision's pixels exactly; a larger
    JPEG is first decoded at a reduced scale that still covers R (within a grey level or so).
    With ``crop_size``, the square sits so that its own centre ``crop_size`` crop is exactly
    torchvision's ``CenterCrop(crop_size)`` of the resized image (they can differ by a pixel).
    """
    image = open_image(path, draft_size=(resolution, resolution))
    return square_pixels(image, resolution, crop_size)


def square_pixels(image: Image.Image, resolution: int, crop_size: int | None = None) -> np.ndarray:
    """:func:`decode_square`'s resize and crop of an RGB image already in memory."""
    width, height = image.size
    if width <= height:
        new_size = (resolution, int(resolution * height / width))
    else:
        new_size = (int(resolution * width / height), resolution)
    if new_size != image.size:
        image = image.resize(new_size, Image.BILINEAR)
    left = _square_offset(new_size[0], resolution, crop_size)
    top = _square_offset(new_size[1], resolution, crop_size)
    image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype=np.uint8)


def _square_offset(length: int, resolution: int, crop_size: int | None) -> int:
    if crop_size is None:
        return int(round((length - resolution) / 2.0))
    # torchvision's crop start minus where center_crop() will cut inside the square.
    offset = int(round((length - crop_size) / 2.0)) - (resolution - crop_size) // 2
    return min(max(offset, 0), length - resolution)


# -- batches ------------------------------------------------------------------------------------


class Normalizer:
    """uint8 NHWC batch -> normalised float NCHW on the model's device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
        self.device = device

    def to_nchw(self, pixels: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch.permute(0, 3, 1, 2)  # NHWC -> NCHW, still uint8

    def __call__(self, batch_uint8_nchw: torch.Tensor) -> torch.Tensor:
        return (batch_uint8_nchw.float() - self.mean) / self.std


def center_crop(batch: torch.Tensor, size: int) -> torch.Tensor:
    height, width = batch.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2
    return batch[..., top : top + size, left : left + size]


def sample_crop_boxes(
    count: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
) -> tuple[list, list]:
    """RandomResizedCrop's box sampler for ``count`` images: ([(top, left, h, w)], [flip?]).

    torchvision's rule (10 tries at a random area fraction in ``scale`` and log-uniform aspect in
    ``ratio``, else the whole image), with every uniform drawn up front from ``generator``.
    """
    area = height * width
    # 10 attempts x (scale, aspect, top, left) uniforms, drawn up front from the step's generator.
    draws = torch.rand(count, 10, 4, generator=generator).tolist()
    flips = [u < 0.5 for u in torch.rand(count, generator=generator).tolist()]
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    boxes = []
    for index in range(count):
        box = (0, 0, height, width)  # fallback: the whole square
        for u_scale, u_ratio, u_top, u_left in draws[index]:
            target_area = area * (scale[0] + u_scale * (scale[1] - scale[0]))
            aspect = math.exp(log_ratio[0] + u_ratio * (log_ratio[1] - log_ratio[0]))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                box = (int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w)
                break
        boxes.append(box)
    return boxes, flips


def random_resized_crop_flip(
    batch: torch.Tensor,
    size: int,
    generator: torch.Generator,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
) -> torch.Tensor:
    """torchvision's RandomResizedCrop(size) + RandomHorizontalFlip, per image, on a batch.

    One antialiased ``resized_crop`` per image (about 1 ms for 256 -> 224 on one core); a single
    ``torchvision.ops.roi_align`` over the batch measured 3.5x slower on the CPU, so the loop stays.
    """
    count, _, height, width = batch.shape
    boxes, flips = sample_crop_boxes(count, height, width, generator, scale, ratio)
    return crop_flip(batch, boxes, flips, size)


def crop_flip(
    batch: torch.Tensor, boxes: Sequence, flips: Sequence[bool], size: int
) -> torch.Tensor:
    """Image i of ``batch``: its box ``(top, left, h, w)`` resized to ``size``, flipped if asked."""
    out = []
    for index, (top, left, crop_h, crop_w) in enumerate(boxes):
        crop = TF.resized_crop(
            batch[index], top, left, crop_h, crop_w, [size, size], antialias=True
        )
        out.append(TF.horizontal_flip(crop) if flips[index] else crop)
    return torch.stack(out)


class TrainStream:
    """Step-indexed training batches over a small subset, the same on every process.

    The global batch of ``batch_size * world_size`` indices for step ``s`` comes from a chain of
    seeded permutations of the subset (every image once per pass, no dropped remainder; a pass
    may span two steps), and each of its images' crop and flip from one generator seeded by
    ``(seed, s)``, drawn for the whole global batch. Process ``rank`` takes rows
    ``[rank * per_process, (rank + 1) * per_process)`` of both. So a global batch is a pure
    function of ``(seed, step)``: resuming at step s needs only ``batch(s)``, and 1 process x
    batch 16 trains on exactly the images and crops that 2 processes x batch 8 do.
    """

    def __init__(
        self, images: DecodedImages, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ):
        if len(images) == 0:
            raise ValueError("the training subset is empty")
        # With 8 images and batch 32, a batch holds each image once rather than 4 times.
        self.per_process = max(1, min(batch_size, len(images) // world_size or 1))
        self.images, self.seed, self.rank, self.world = images, seed, rank, world_size
        self.global_batch = self.per_process * world_size

    def indices(self, step: int) -> np.ndarray:
        n = len(self.images)
        start = step * self.global_batch
        first_pass, offset = divmod(start, n)
        chunks, need, pass_index = [], self.global_batch, first_pass
        while need > 0:
            order = np.random.default_rng([self.seed, pass_index]).permutation(n)
            take = order[offset : offset + need]
            chunks.append(take)
            need -= len(take)
            offset, pass_index = 0, pass_index + 1
        return np.concatenate(chunks)[self._rows()]

    def _rows(self) -> slice:
        return slice(self.rank * self.per_process, (self.rank + 1) * self.per_process)

    def augmentation(self, step: int) -> tuple[list, list]:
        """This process's (crop boxes, flips) for ``step``, row for row with ``indices(step)``."""
        side = self.images.pixels.shape[1]
        generator = torch.Generator(device="cpu").manual_seed(
            int(np.random.default_rng([self.seed, step, 7]).integers(2**62))
        )
        boxes, flips = sample_crop_boxes(self.global_batch, side, side, generator)
        return boxes[self._rows()], flips[self._rows()]

    def batch(
        self, step: int, normalizer: Normalizer, image_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices(step)
        boxes, flips = self.augmentation(step)
        order = np.argsort(index, kind="stable")  # sorted reads are kinder to a memmap
        index = index[order]
        raw = normalizer.to_nchw(self.images.pixels[index])
        crops = crop_flip(raw, [boxes[i] for i in order], [flips[i] for i in order], image_size)
        labels = torch.from_numpy(self.images.labels[index]).to(normalizer.device)
        return normalizer(crops), labels


def eval_batches(
    images: DecodedImages,
    batch_size: int,
    normalizer: Normalizer,
    image_size: int,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share of an eval split: (global indices, normalised centre crops).

    Shards are contiguous ranges, so under N processes every image is evaluated exactly once.
    """
    bounds = np.linspace(0, len(images), world_size + 1).astype(int)
    start, stop = bounds[rank], bounds[rank + 1]
    for first in range(start, stop, batch_size):
        index = np.arange(first, min(first + batch_size, stop))
        raw = normalizer.to_nchw(images.pixels[index])
        yield torch.from_numpy(index), normalizer(center_crop(raw, image_size))
