"""Image frames (e.g. Aff-Wild2 ``cropped_aligned`` JPEGs) -> normalised CLIP input batches.

:class:`FrameLoader` runs a DALI pipeline (``external_source`` of file bytes -> ``decoders.image``
(``mixed`` = nvJPEG on GPU, ``cpu`` otherwise) -> ``resize`` -> ``crop_mirror_normalize``,
delivered by ``DALIGenericIterator``), or the PIL/NumPy reference :func:`clip_preprocess_ref`.
Both backends see the same epoch order, shards and batches; in evaluation mode they give the
same tensors within JPEG-decoder/resize tolerance.

Order and sharding are computed here in Python, not by DALI's file reader, so that
(1) the reference backend reproduces them exactly, (2) an epoch's shuffle is a true seeded
permutation (``readers.file``'s ``random_shuffle`` is a bounded shuffle buffer), and (3) the last
partial batch is delivered as it is, with no padding samples.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)

# OpenAI CLIP normalisation (open_clip's OPENAI_DATASET_MEAN / _STD), on the 0..1 scale.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Training augmentation (ours; the paper does not specify one). Random resized crop keeps
# most of the face: cropped_aligned frames are already tight face crops.
AUG_AREA = (0.6, 1.0)              # fraction of the image area kept by the random crop
AUG_ASPECT = (3 / 4, 4 / 3)        # aspect-ratio range of the random crop
AUG_BRIGHTNESS = (0.8, 1.2)        # brightness multiplier range
AUG_CONTRAST = (0.8, 1.2)          # contrast multiplier range (about mid-grey, 128)
AUG_FLIP_P = 0.5                   # horizontal flip probability
# Colour jitter, applied to the decoded batch by both backends (``colour_jitter``). Without it a
# small encoder from random init learns skin tone and lighting (identities) instead of the face's
# shape: docs/clip_stage.md has the side-by-side numbers.
AUG_CHANNEL_GAIN = (0.85, 1.15)    # independent gain per RGB channel (colour cast)
AUG_SHIFT = (-0.1, 0.1)            # additive shift on the 0..1 scale, shared by the channels
AUG_GRAY_P = 0.3                   # probability of turning a frame grey (ITU-R 601 luma)
_LUMA = (0.299, 0.587, 0.114)
# FrameLoader backends ("pil" is the command lines' name of the reference backend)
FRAMES_BACKENDS = ("auto", "dali", "reference", "pil")


# ---------------------------------------------------------------------------------------------
# Undecodable frames
#
# A corrupt or truncated image must not take the process down: nvImageCodec has crashed the
# process (SIGSEGV) on such files, so the DALI path checks the bytes it already holds before
# handing them over, and both backends replace a bad frame with a grey placeholder and report
# it (``ok`` False in the batch, the path in ``FrameLoader.bad``): callers treat it like a
# missing frame (the neighbour's feature, masked).


def image_problem(data) -> str | None:
    """Why the encoded image ``data`` (bytes or uint8 array) cannot be decoded, or None.

    A structural check on bytes already in memory (no decoding): JPEG needs SOI, a consistent
    marker chain up to a frame header and the scan, and EOI at the end (truncation); PNG needs
    its signature and IEND. Other formats pass (the decoder still reports them).
    """
    b = data if isinstance(data, bytes) else np.asarray(data, np.uint8).tobytes()
    if len(b) < 4:
        return f"{len(b)} bytes"
    if b[:2] == b"\xff\xd8":
        return _jpeg_problem(b)
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        return None if b"IEND" in b[-16:] else "truncated PNG (no IEND chunk)"
    return None


def _jpeg_problem(b: bytes) -> str | None:
    tail = b.rstrip(b"\x00")
    if not tail.endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    pos, frame = 2, False
    while pos + 4 <= len(b):
        if b[pos] != 0xFF:
            return f"invalid JPEG marker at byte {pos}"
        marker = b[pos + 1]
        if marker == 0xFF:                       # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers
            pos += 2
            continue
        length = int.from_bytes(b[pos + 2:pos + 4], "big")
        if length < 2 or pos + 2 + length > len(b):
            return f"JPEG segment at byte {pos} runs past the end of the file"
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            frame = True
        if marker == 0xDA:
            return None if frame else "JPEG scan without a frame header"
        pos += 2 + length
    return "JPEG without image data"


_PLACEHOLDER: dict[str, np.ndarray] = {}


def placeholder_jpeg() -> np.ndarray:
    """Encoded bytes of a small mid-grey JPEG: what a bad frame is decoded as."""
    if "jpeg" not in _PLACEHOLDER:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (128, 128, 128)).save(buf, format="JPEG")
        _PLACEHOLDER["jpeg"] = np.frombuffer(buf.getvalue(), np.uint8).copy()
    return _PLACEHOLDER["jpeg"]


def _report_bad(bad: dict, path: str, reason: str) -> None:
    if path not in bad:
        bad[path] = reason
        log.warning("%s: cannot decode image (%s); treated as a missing frame", path, reason)


# ---------------------------------------------------------------------------------------------
# Reference (PIL / NumPy)


def _load_rgb(item):
    """A path, PIL image or HWC uint8 array -> RGB PIL image."""
    from PIL import Image

    if isinstance(item, (str, os.PathLike)):
        try:
            with Image.open(item) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise FileNotFoundError(f"image file not found: {item}") from None
        except OSError as e:
            raise ValueError(f"{item}: cannot decode image ({e})") from None
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    arr = np.asarray(item)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HWC uint8 RGB array, got shape {arr.shape} {arr.dtype}")
    return Image.fromarray(arr)


def _normalise(arr_hwc_uint8_or_float, mean, std):
    """[H, W, 3] 0..255 -> [3, H, W] float32 ((x / 255) - mean) / std."""
    x = np.asarray(arr_hwc_uint8_or_float, dtype=np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def clip_preprocess_ref(paths_or_images, image_size: int, mean=CLIP_MEAN, std=CLIP_STD):
    """Decode, resize to image_size x image_size (bilinear, antialiased when shrinking, as
    DALI's default ``resize``), scale to 0..1 and normalise.

    paths_or_images: sequence of paths, PIL images or [H, W, 3] uint8 arrays.
    Returns torch float32 [N, 3, S, S].
    """
    import torch
    from PIL import Image

    out = np.empty((len(paths_or_images), 3, image_size, image_size), np.float32)
    for i, item in enumerate(paths_or_images):
        im = _load_rgb(item).resize((image_size, image_size), Image.BILINEAR)
        out[i] = _normalise(im, mean, std)
    return torch.from_numpy(out)


def _augment_ref(im, image_size, rng: np.random.Generator):
    """Random resized crop + brightness/contrast + flip, the reference twin of the DALI graph.

    Same distributions as the DALI path, different random streams: augmented images of the
    two backends are not expected to be equal.
    """
    from PIL import Image

    w, h = im.size
    for _ in range(10):  # like torchvision / DALI: retry, then fall back to the whole image
        area = rng.uniform(*AUG_AREA) * w * h
        ratio = math.exp(rng.uniform(math.log(AUG_ASPECT[0]), math.log(AUG_ASPECT[1])))
        cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if cw <= w and ch <= h:
            x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            break
    else:
        x0, y0, cw, ch = 0.0, 0.0, float(w), float(h)
    im = im.resize((image_size, image_size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    x = np.asarray(im, np.float32)
    brightness, contrast = rng.uniform(*AUG_BRIGHTNESS), rng.uniform(*AUG_CONTRAST)
    x = np.clip(brightness * (128.0 + contrast * (x - 128.0)), 0, 255)
    x = np.round(x)  # DALI's brightness_contrast keeps uint8
    if rng.uniform() < AUG_FLIP_P:
        x = x[:, ::-1]
    return x


def colour_jitter(images, mean, std, generator):
    """Per-image colour cast, brightness shift and random greyscale on a normalised batch.

    images: [B, 3, S, S] normalised with ``mean``/``std`` (0..1 scale), any float dtype and
    device; the random draws come from the CPU ``generator`` (so they do not depend on the
    device). Works in the 0..1 pixel space and clamps there, then normalises again.
    """
    import torch

    b = images.shape[0]
    gain = torch.empty(b, 3, 1, 1).uniform_(*AUG_CHANNEL_GAIN, generator=generator)
    shift = torch.empty(b, 1, 1, 1).uniform_(*AUG_SHIFT, generator=generator)
    gray = (torch.rand(b, 1, 1, 1, generator=generator) < AUG_GRAY_P).float()
    dev = images.device
    m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
    sd = torch.tensor(std, device=dev).view(1, 3, 1, 1)
    x = images.float() * sd + m
    x = x * gain.to(dev) + shift.to(dev)
    luma = (x * torch.tensor(_LUMA, device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
    g = gray.to(dev)
    x = (g * luma + (1 - g) * x).clamp_(0.0, 1.0)
    return ((x - m) / sd).to(images.dtype)


# ---------------------------------------------------------------------------------------------
# Epoch order and sharding (shared by both backends)


def shard_order(n: int, shard_id: int, num_shards: int, train: bool, seed: int,
                epoch: int) -> np.ndarray:
    """Positions (int64) this shard visits in ``epoch``.

    Evaluation: contiguous, disjoint shards covering all n items (sizes differ by at most 1).
    Training: a seeded permutation of all n items cut into num_shards equal parts of n //
    num_shards (the remainder, different each epoch, is left out), so every rank runs the same
    number of batches (DDP would hang otherwise).
    """
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id}")
    if not train:
        lo, hi = n * shard_id // num_shards, n * (shard_id + 1) // num_shards
        return np.arange(lo, hi, dtype=np.int64)
    perm = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)
    per = n // num_shards
    return perm[shard_id * per:(shard_id + 1) * per]


def _batches(order: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    stop = (len(order) // batch_size) * batch_size if drop_last else len(order)
    return [order[i:min(i + batch_size, stop)] for i in range(0, stop, batch_size)]


def _torch_dtype(dtype):
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""))
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    return dtype


# ---------------------------------------------------------------------------------------------
# DALI


class _EpochSource:
    """external_source callback data for one epoch: (encoded bytes, positions) per batch.

    Remembers which batches were handed to DALI, so a decode error can name the bad file.
    """

    def __init__(self, paths, batches, bad: dict):
        self.paths, self.batches, self.fed = paths, batches, 0
        self.bad = bad               # path -> reason, shared with the loader
        self.bad_pos: set[int] = set()

    def __iter__(self):
        for idx in self.batches:
            encoded = []
            for i in idx:
                try:
                    data = np.fromfile(self.paths[i], dtype=np.uint8)
                except FileNotFoundError:
                    raise FileNotFoundError(f"image file not found: {self.paths[i]}") from None
                why = image_problem(data)
                if why is not None:   # never hand nvImageCodec a broken file (it can segfault)
                    _report_bad(self.bad, self.paths[i], why)
                    self.bad_pos.add(int(i))
                    data = placeholder_jpeg()
                encoded.append(data)
            self.fed += 1
            yield encoded, [np.array([i], np.int64) for i in idx]


def _dali_pipeline(source, *, batch_size, image_size, mean, std, device, device_id, train,
                   seed, num_threads, fp16):
    from nvidia.dali import fn, pipeline_def, types

    mean255 = [255.0 * m for m in mean]
    std255 = [255.0 * s for s in std]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  seed=seed, prefetch_queue_depth=2)
    def pipe():
        encoded, index = fn.external_source(source=source, num_outputs=2, batch=True,
                                            dtype=[types.UINT8, types.INT64], cycle=False)
        images = fn.decoders.image(encoded, device="mixed" if device != "cpu" else "cpu",
                                   output_type=types.RGB)
        if train:
            images = fn.random_resized_crop(images, size=[image_size, image_size],
                                            random_area=list(AUG_AREA),
                                            random_aspect_ratio=list(AUG_ASPECT))
            images = fn.brightness_contrast(
                images, brightness=fn.random.uniform(range=list(AUG_BRIGHTNESS)),
                contrast=fn.random.uniform(range=list(AUG_CONTRAST)), contrast_center=128.0)
            mirror = fn.random.coin_flip(probability=AUG_FLIP_P)
        else:
            # linear with antialiasing when shrinking: what PIL's BILINEAR does in the reference
            images = fn.resize(images, size=[image_size, image_size])
            mirror = 0
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT16 if fp16 else types.FLOAT, output_layout="CHW",
            mean=mean255, std=std255, mirror=mirror)
        return images, index

    p = pipe()
    p.build()
    return p


# ---------------------------------------------------------------------------------------------


class FrameLoader:
    """Batches of normalised frames from image files, for CLIP fine-tuning and extraction.

    Iterating yields dicts: ``images`` [B, 3, S, S] (dtype, on device), ``labels`` [B] (when
    labels are given; on device), ``index`` [B] int64 CPU positions into ``paths``, ``ok`` [B]
    bool CPU: False where the file could not be decoded (corrupt or truncated; its image is a
    grey placeholder, the path and reason are in ``self.bad`` and logged). Such a frame must
    be treated like a missing one; the process never depends on the decoder surviving it.

    train=False: this shard's images in order, each exactly once, last batch partial.
    train=True: a seeded permutation per epoch (epoch = number of previous iterations, or
    set_epoch), equal-size shards, augmentation (random resized crop, brightness/contrast, flip;
    then ``colour_jitter``).
    augment: None follows ``train``; False gives shuffled training batches without augmentation.
    backend: "dali", "reference" / "pil" (PIL/NumPy) or "auto" (DALI when importable).
    prefetch: with the reference backend and a CUDA device, each batch (images and labels) is
    decoded one batch ahead and copied from pinned memory with ``non_blocking`` on a side
    stream (``affaccel.data.prefetch``) while the caller works on the current one; the
    batches are the same. DALI prefetches on its own (``prefetch_queue_depth=2``, decoding on
    the GPU); on the CPU there is nothing to copy.
    """

    def __init__(self, paths: Sequence[str], labels=None, batch_size: int = 256,
                 image_size: int = 224, mean=CLIP_MEAN, std=CLIP_STD, device: str = "cpu",
                 train: bool = False, seed: int = 0, shard_id: int = 0, num_shards: int = 1,
                 dtype=None, num_threads: int = 2, backend: str = "auto",
                 drop_last: bool = False, augment: bool | None = None, prefetch: bool = True):
        import torch

        self.paths = [os.fspath(p) for p in paths]
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape[0] != len(self.paths):
                raise ValueError(f"labels has {labels.shape[0]} rows, paths has {len(self.paths)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each (std > 0), got {mean}, {std}")
        if num_shards < 1 or not 0 <= shard_id < num_shards:
            raise ValueError(f"need 0 <= shard_id < num_shards, got {shard_id}, {num_shards}")
        self.device = str(torch.device(device))
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
        if backend not in FRAMES_BACKENDS:
            raise ValueError(f"backend must be one of {FRAMES_BACKENDS}, got {backend!r}")
        if backend == "pil":
            backend = "reference"
        if backend == "auto":
            from .decode import dali_available

            backend = "dali" if dali_available() else "reference"
        self.backend = backend
        self.labels = labels
        self.batch_size, self.image_size = int(batch_size), int(image_size)
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.train, self.seed, self.drop_last = bool(train), int(seed), bool(drop_last)
        self.augment = self.train if augment is None else bool(augment)
        self.shard_id, self.num_shards = int(shard_id), int(num_shards)
        self.dtype = _torch_dtype(dtype if dtype is not None else torch.float32)
        self.num_threads = int(num_threads)
        self.prefetch = bool(prefetch)
        self.epoch = 0
        self.bad: dict[str, str] = {}   # undecodable files seen so far: path -> reason

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration uses (its shuffle and augmentation seeds)."""
        self.epoch = int(epoch)

    def _order(self, epoch: int) -> np.ndarray:
        return shard_order(len(self.paths), self.shard_id, self.num_shards, self.train,
                           self.seed, epoch)

    def __len__(self) -> int:
        n = len(self._order(0))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        self.epoch += 1
        batches = _batches(self._order(epoch), self.batch_size, self.drop_last)
        if not batches:
            return iter(())
        if self.backend == "dali":
            return self._iter_dali(batches, epoch)
        return self._iter_ref(batches, epoch)

    # -- helpers ----------------------------------------------------------------------------

    def _finish(self, images, index: np.ndarray, jitter=None, ok=None, labels=None) -> dict:
        """The batch dict; ``labels``: this batch's labels already on the device (else taken
        from ``self.labels`` here)."""
        import torch

        if jitter is not None:
            images = colour_jitter(images, self.mean, self.std, jitter)
        ok = np.ones(len(index), bool) if ok is None else ok
        out = {"images": images.to(self.dtype), "index": torch.from_numpy(index),
               "ok": torch.from_numpy(ok)}
        if labels is not None:
            out["labels"] = labels
        elif self.labels is not None:
            out["labels"] = torch.as_tensor(self.labels[index]).to(self.device, non_blocking=True)
        return out

    def _jitter_generator(self, epoch):
        """The colour-jitter stream of (seed, epoch, shard), or None without augmentation."""
        import torch

        if not self.augment:
            return None
        key = np.random.SeedSequence([self.seed, epoch, self.shard_id, 7]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(key))

    def _ref_image(self, i: int, rng) -> tuple[np.ndarray, bool]:
        """Frame ``i`` as [3, S, S] float32 and whether it decoded (a grey frame if not)."""
        from PIL import Image

        ok = True
        try:
            im = _load_rgb(self.paths[i])
        except ValueError as e:          # corrupt / truncated: reported, grey placeholder
            _report_bad(self.bad, self.paths[i], str(e).removeprefix(f"{self.paths[i]}: "))
            im, ok = Image.new("RGB", (self.image_size, self.image_size), (128, 128, 128)), False
        if self.augment:
            return _normalise(_augment_ref(im, self.image_size, rng), self.mean, self.std), ok
        im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
        return _normalise(im, self.mean, self.std), ok

    def _iter_ref(self, batches, epoch):
        from affaccel.data.prefetch import prefetch

        # one stream per (seed, epoch, shard): reproducible, different across ranks
        rng = np.random.default_rng([self.seed, epoch, self.shard_id])
        jitter = self._jitter_generator(epoch)
        decoded = self._decode_ref(batches, rng)
        for images, labels, idx, ok in prefetch(decoded, self.device, self.prefetch):
            yield self._finish(images, idx, jitter, ok, labels)

    def _decode_ref(self, batches, rng):
        """(images [B, 3, S, S] float32, labels or None, positions, ok) per batch, on the CPU."""
        import torch

        for idx in batches:
            pairs = [self._ref_image(int(i), rng) for i in idx]
            images = torch.from_numpy(np.stack([a for a, _ in pairs]))
            ok = np.array([k for _, k in pairs], bool)
            labels = torch.as_tensor(self.labels[idx]) if self.labels is not None else None
            yield images, labels, idx, ok

    def _iter_dali(self, batches, epoch):
        import torch
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if self.device == "cpu":
            device_id = None
        else:
            dev = torch.device(self.device)
            device_id = dev.index if dev.index is not None else torch.cuda.current_device()
        source = _EpochSource(self.paths, batches, self.bad)
        # A fresh pipeline per epoch: its random seed follows (seed, epoch, shard), and an
        # epoch left early leaves no prefetched batches behind for the next one.
        pipe = _dali_pipeline(
            source, batch_size=self.batch_size, image_size=self.image_size, mean=self.mean,
            std=self.std, device=self.device, device_id=device_id, train=self.augment,
            seed=(self.seed * 1_000_003 + epoch * 1_009 + self.shard_id) % (2 ** 31),
            num_threads=self.num_threads, fp16=self.dtype == torch.float16)
        delivered = 0
        it = None
        jitter = self._jitter_generator(epoch)
        while True:
            try:
                if it is None:  # builds and runs the first batch(es) already
                    it = DALIGenericIterator(pipe, ["images", "index"],
                                             last_batch_policy=LastBatchPolicy.PARTIAL)
                out = next(it)
            except StopIteration:
                break
            except RuntimeError as e:
                # a file the structural check let through: finish the epoch on the reference
                # decoder (a new DALI pipeline after a failed one is what crashed before)
                log.warning("DALI image pipeline failed (%s); decoding the remaining %d batches "
                            "with PIL", str(e).splitlines()[0][:200], len(batches) - delivered)
                yield from self._iter_ref(batches[delivered:], epoch)
                return
            out = out[0]
            index = out["index"].reshape(-1).cpu().numpy().astype(np.int64)
            if not np.array_equal(index, batches[delivered]):  # DALI must keep our order
                raise RuntimeError("DALI returned batches out of order")
            delivered += 1
            ok = np.array([int(i) not in source.bad_pos for i in index], bool)
            yield self._finish(out["images"], index, jitter, ok)
        if delivered != len(batches):
            raise RuntimeError(f"DALI delivered {delivered} of {len(batches)} batches")

