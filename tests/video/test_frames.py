"""FrameLoader: DALI vs PIL reference, order, completeness, shuffling, shards, augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from affaccel.video.frames import (
    CLIP_MEAN,
    CLIP_STD,
    FrameLoader,
    clip_preprocess_ref,
    shard_order,
)

N = 23  # prime: no batch size or shard count used below divides it


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """N 112x112 face-sized JPEGs: smooth pattern plus noise (JPEG-realistic content)."""
    from PIL import Image

    from _video_media import pattern_frame

    d = tmp_path_factory.mktemp("jpg")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N):
        img = pattern_frame(i, 112, 112).astype(np.int16) + rng.integers(-20, 21, (112, 112, 3))
        p = d / f"{i + 1:05d}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


def _all(loader):
    batches = list(loader)
    out = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    return out, [b["images"].shape[0] for b in batches]


# JPEG decoders agree exactly here (both libjpeg-turbo); resizing differs slightly between
# DALI's and PIL's filters. Measured max |diff| (normalised units, 1 level ~ 0.015):
# 112 -> 112: 2.4e-7, 112 -> 224: 0.015, 112 -> 64: 0.088 (mean 0.0025).
PARITY = {112: (1e-5, 1e-6), 224: (0.03, 0.005), 64: (0.15, 0.01)}


@pytest.mark.parametrize("size", sorted(PARITY))
def test_dali_matches_reference(jpegs, size):
    ref = clip_preprocess_ref(jpegs, size)
    assert ref.shape == (N, 3, size, size) and ref.dtype == torch.float32
    got, _ = _all(FrameLoader(jpegs, batch_size=8, image_size=size, backend="dali"))
    diff = (got["images"] - ref).abs()
    max_tol, mean_tol = PARITY[size]
    print(f"DALI vs reference at {size}px: max {diff.max():.3g} mean {diff.mean():.3g}")
    assert diff.max() <= max_tol and diff.mean() <= mean_tol
    # the reference backend of the loader is clip_preprocess_ref itself
    ref_loader, _ = _all(FrameLoader(jpegs, batch_size=8, image_size=size, backend="reference"))
    torch.testing.assert_close(ref_loader["images"], ref, rtol=0, atol=0)


def test_reference_normalisation_by_hand(jpegs):
    from PIL import Image

    x = np.asarray(Image.open(jpegs[3]).convert("RGB"), np.float32)  # 112 -> 112: no resize
    want = ((x / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)).transpose(2, 0, 1)
    torch.testing.assert_close(clip_preprocess_ref([jpegs[3]], 112)[0],
                               torch.from_numpy(want.astype(np.float32)))
    # paths, PIL images and arrays are equivalent inputs
    arr = np.asarray(Image.open(jpegs[3]).convert("RGB"))
    torch.testing.assert_close(clip_preprocess_ref([arr, Image.fromarray(arr)], 64),
                               clip_preprocess_ref([jpegs[3]] * 2, 64))


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_eval_order_complete_partial_last_batch(jpegs, backend):
    labels = np.arange(N, dtype=np.float32) * 0.5 - 3
    loader = FrameLoader(jpegs, labels, batch_size=5, image_size=32, backend=backend)
    assert len(loader) == 5
    out, sizes = _all(loader)
    assert sizes == [5, 5, 5, 5, 3]
    assert out["index"].dtype == torch.int64 and out["index"].tolist() == list(range(N))
    torch.testing.assert_close(out["labels"], torch.from_numpy(labels))
    # a second pass gives the same tensors
    again, _ = _all(loader)
    torch.testing.assert_close(again["images"], out["images"], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_shuffle_is_seeded_per_epoch(jpegs, backend):
    def orders(seed):
        loader = FrameLoader(jpegs, batch_size=4, image_size=16, train=True, seed=seed,
                             backend=backend)
        return [_all(loader)[0]["index"].tolist() for _ in range(2)]

    a, b = orders(1), orders(1)
    assert a == b                                        # same seed, same epochs
    assert sorted(a[0]) == sorted(a[1]) == list(range(N))  # each epoch a permutation
    assert a[0] != a[1] and a[0] != list(range(N))       # reshuffled every epoch
    assert orders(2)[0] != a[0]
    loader = FrameLoader(jpegs, batch_size=4, image_size=16, train=True, seed=1, backend=backend)
    loader.set_epoch(1)
    assert _all(loader)[0]["index"].tolist() == a[1]


def test_backends_share_order(jpegs):
    kw = dict(batch_size=6, image_size=16, train=True, seed=5, shard_id=1, num_shards=3)
    d = _all(FrameLoader(jpegs, backend="dali", **kw))[0]["index"]
    r = _all(FrameLoader(jpegs, backend="reference", **kw))[0]["index"]
    assert d.tolist() == r.tolist()


@pytest.mark.parametrize("train", [False, True])
def test_shards_disjoint_and_covering(jpegs, train):
    shards = []
    for k in range(3):
        loader = FrameLoader(jpegs, batch_size=4, image_size=16, train=train, seed=7,
                             shard_id=k, num_shards=3, backend="dali")
        idx = _all(loader)[0]["index"].tolist()
        assert len(loader) == -(-len(idx) // 4)
        shards.append(idx)
    flat = sum(shards, [])
    assert len(flat) == len(set(flat))
    if train:  # equal shards (DDP needs equal batch counts); N % 3 items left out this epoch
        assert [len(s) for s in shards] == [N // 3] * 3
    else:
        assert sorted(flat) == list(range(N)) and flat == list(range(N))


def test_shard_order_arguments():
    with pytest.raises(ValueError, match="shard_id"):
        shard_order(10, 3, 3, False, 0, 0)


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_augmentation_only_in_train_mode(jpegs, backend):
    kw = dict(batch_size=N, image_size=48, backend=backend)
    ev = _all(FrameLoader(jpegs, **kw))[0]
    ev2 = _all(FrameLoader(jpegs, **kw))[0]
    torch.testing.assert_close(ev["images"], ev2["images"], rtol=0, atol=0)
    tr = _all(FrameLoader(jpegs, train=True, seed=0, **kw))[0]
    order = tr["index"].argsort()
    aug = tr["images"][order]
    base = ev["images"][tr["index"].sort().values]
    per_image = (aug - base).abs().flatten(1).mean(1)
    assert (per_image > 0.02).float().mean() >= 0.9, per_image   # nearly every image changed
    assert torch.isfinite(aug).all() and aug.shape == base.shape
    # same seed -> same augmented batch
    tr2 = _all(FrameLoader(jpegs, train=True, seed=0, **kw))[0]
    torch.testing.assert_close(tr2["images"], tr["images"], rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_shuffled_without_augmentation(jpegs, backend):
    # Training batches must be shuffled even when augmentation is off: an in-order loader feeds
    # one video's frames per batch, and fine-tuning then learns nothing.
    kw = dict(batch_size=N, image_size=48, backend=backend)
    ev = _all(FrameLoader(jpegs, **kw))[0]
    tr = _all(FrameLoader(jpegs, train=True, augment=False, seed=0, **kw))[0]
    assert tr["index"].tolist() != list(range(N))
    assert sorted(tr["index"].tolist()) == list(range(N))
    torch.testing.assert_close(tr["images"], ev["images"][tr["index"]], rtol=0, atol=0)


def test_dtype_and_labels_int(jpegs):
    labels = np.arange(N, dtype=np.int64) % 8
    out = _all(FrameLoader(jpegs, labels, batch_size=10, image_size=32, dtype=torch.bfloat16))[0]
    assert out["images"].dtype == torch.bfloat16 and out["labels"].dtype == torch.int64
    assert out["labels"].tolist() == labels.tolist()


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_bad_files_are_named(jpegs, tmp_path, backend):
    # an undecodable file is reported by path and flagged, not fatal (tests/faults has more)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all" * 10)
    loader = FrameLoader(jpegs[:5] + [str(bad)], batch_size=4, image_size=16, backend=backend)
    out, _ = _all(loader)
    assert out["ok"].tolist() == [True] * 5 + [False] and list(loader.bad) == [str(bad)]
    with pytest.raises(FileNotFoundError, match="nothere.jpg"):
        list(FrameLoader([str(tmp_path / "nothere.jpg")], batch_size=4, image_size=16,
                         backend=backend))


def test_bad_arguments(jpegs):
    with pytest.raises(ValueError, match="labels"):
        FrameLoader(jpegs, labels=np.zeros(3))
    with pytest.raises(ValueError, match="backend"):
        FrameLoader(jpegs, backend="opencv")
    with pytest.raises(ValueError, match="shard_id"):
        FrameLoader(jpegs, shard_id=2, num_shards=2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_matches_reference(dali, jpegs, dtype):
    labels = np.arange(N)
    loader = FrameLoader(jpegs, labels, batch_size=8, image_size=224, device="cuda", dtype=dtype,
                         backend="dali")
    out, sizes = _all(loader)
    assert sizes == [8, 8, 7] and out["images"].is_cuda and out["images"].dtype == dtype
    assert out["labels"].is_cuda and out["index"].tolist() == list(range(N))
    ref = clip_preprocess_ref(jpegs, 224)
    # nvJPEG may differ from libjpeg-turbo by a few levels (IDCT, chroma upsampling)
    diff = (out["images"].float().cpu() - ref).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.25, (diff.mean(), diff.max())


@pytest.mark.gpu
def test_gpu_train_mode(dali, jpegs):
    loader = FrameLoader(jpegs, batch_size=8, image_size=64, device="cuda", train=True,
                         backend="dali", dtype=torch.float16)
    out, _ = _all(loader)
    assert sorted(out["index"].tolist()) == list(range(N))
    assert torch.isfinite(out["images"].float()).all()
