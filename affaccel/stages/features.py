"""Stage 2: per-frame CLIP features, the on-disk cache and the extraction loop (paper sec. 3.1).

Cache layout (one folder per encoder)::

    <root>/<key>/manifest.json        which videos are complete, their shapes and checksums
    <root>/<key>/<video_id>.npy       float16 [T, D], memory-mappable

``key`` hashes the encoder identity (model, every weight, preprocessing) and the preprocessing
identity, so a different encoder never reads another encoder's features. Each array is written
atomically and only then entered in the manifest, so an interrupted extraction leaves complete
entries only and the next run resumes with the videos that are not in the manifest.

Heavy imports (torch, DALI) happen inside ``extract_features``; the cache itself needs NumPy only,
so the window engine can read features without importing torch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from affaccel.io_utils import atomic_write_json, atomic_write_with

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "affaccel-features/1"
FEATURE_DTYPE = np.float16
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def cache_key(encoder_identity: str, preprocessing_identity: str = "") -> str:
    """Folder name of a cache: hash of the encoder identity and the preprocessing identity."""
    blob = f"{encoder_identity}|{preprocessing_identity}".encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def frames_fingerprint(record: Any) -> str:
    """Identity of a video's frames as they are on disk now: every frame file's resolved path,
    size and modification time (one ``stat`` per file, no reading), and which frames are
    present. Replacing, editing or moving the images changes it; so does another data root."""
    h = hashlib.sha256(f"{record.video_id}|{record.n_frames}".encode())
    last = None
    for p in record.frame_paths:
        if p == last:             # a missing frame points at its neighbour's file
            h.update(b"=")
            continue
        last = p
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}|missing\n".encode())
    h.update(np.asarray(record.frame_present, bool).tobytes())
    return h.hexdigest()[:20]


def data_fingerprint(records: Sequence[Any]) -> str:
    """Identity of a set of videos for the fine-tune cache: each video's frames
    (:func:`frames_fingerprint`), split and labels with their masks (the annotation files'
    content as read), in video order."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: (r.video_id, r.split)):
        h.update(f"{r.video_id}|{r.split}|{frames_fingerprint(r)}".encode())
        for task in sorted(r.labels):
            h.update(task.encode() + np.ascontiguousarray(r.labels[task]).tobytes())
            h.update(np.ascontiguousarray(r.label_mask[task], bool).tobytes())
    return h.hexdigest()[:20]


def _crc32_file(path: Path, chunk: int = 1 << 22) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


class FeatureCache:
    """Features of one encoder: one float16 ``.npy`` [T, D] per video plus a JSON manifest.

    Args:
        root: folder holding caches of any number of encoders (one sub-folder each).
        encoder_identity: ``ClipEncoder.identity()`` (model, weights, preprocessing).
        preprocessing_identity: ``ClipEncoder.preprocessing_identity()`` (or any string that
            changes when the frames fed to the encoder change).
    """

    def __init__(self, root: str | Path, encoder_identity: str, preprocessing_identity: str = ""):
        if not encoder_identity:
            raise ValueError("FeatureCache: encoder_identity must be a non-empty string")
        self.root = Path(root)
        self.encoder_identity = encoder_identity
        self.preprocessing_identity = preprocessing_identity
        self.key = cache_key(encoder_identity, preprocessing_identity)
        self.dir = self.root / self.key
        self.manifest_path = self.dir / "manifest.json"
        self._manifest = self._read_manifest()
        self._part_path: Path | None = None   # set by write_to_part (one writer per rank)
        self._written: dict = {}

    @classmethod
    def for_encoder(cls, root: str | Path, encoder) -> "FeatureCache":
        """The cache of a ``ClipEncoder`` (hashes its weights once)."""
        return cls(root, encoder.identity(), encoder.preprocessing_identity())

    # -- manifest --------------------------------------------------------------------------
    def _empty_manifest(self) -> dict:
        return {"format": MANIFEST_FORMAT, "key": self.key, "encoder_identity": self.encoder_identity,
                "preprocessing_identity": self.preprocessing_identity, "dtype": "float16",
                "feature_dim": None, "videos": {}}

    def _read_manifest(self) -> dict:
        if not self.manifest_path.exists():
            return self._empty_manifest()
        try:
            m = json.loads(self.manifest_path.read_text())
            ok = (m.get("format") == MANIFEST_FORMAT and m.get("key") == self.key
                  and m.get("encoder_identity") == self.encoder_identity
                  and isinstance(m.get("videos"), dict))
        except (OSError, ValueError) as e:
            log.warning("feature cache manifest %s unreadable (%s): starting it afresh",
                        self.manifest_path, e)
            return self._empty_manifest()
        if not ok:
            log.warning("feature cache manifest %s belongs to another encoder or format: "
                        "starting it afresh", self.manifest_path)
            return self._empty_manifest()
        return m

    def reload(self) -> None:
        """Read the manifest again (another process may have rewritten it)."""
        self._manifest = self._read_manifest()

    def write_to_part(self, rank: int) -> None:
        """Record this writer's new entries in ``manifest.part-<rank>.json`` instead of the shared
        manifest, so that several processes can fill one cache at once (``torchrun``); one
        process then folds the parts in with :meth:`merge_parts`."""
        self._part_path = self.dir / f"manifest.part-{int(rank)}.json"
        self._written = {}

    def merge_parts(self) -> list[str]:
        """Fold every ``manifest.part-*.json`` (written by :meth:`write_to_part` writers, or left by
        an interrupted sharded run) into ``manifest.json`` atomically, then delete the parts.
        Parts of another encoder or format are deleted unread. Returns the video ids merged.
        Call from one process only, when the part writers are done."""
        merged: list[str] = []
        parts = sorted(self.dir.glob("manifest.part-*.json")) if self.dir.is_dir() else []
        for part in parts:
            try:
                m = json.loads(part.read_text())
                ok = (m.get("format") == MANIFEST_FORMAT and m.get("key") == self.key
                      and m.get("encoder_identity") == self.encoder_identity and isinstance(m.get("videos"), dict))
            except (OSError, ValueError):
                ok = False
            if not ok:
                log.warning("feature cache manifest part %s unreadable or of another encoder: ignored", part)
                continue
            if m["videos"]:
                self._manifest["feature_dim"] = m["feature_dim"]
                self._manifest["videos"].update(m["videos"])
                merged += list(m["videos"])
        if merged:
            atomic_write_json(self.manifest_path, self._manifest)
        for part in parts:
            part.unlink(missing_ok=True)
        return merged

    @property
    def feature_dim(self) -> int | None:
        return self._manifest["feature_dim"]

    def video_ids(self) -> list[str]:
        """Videos entered in the manifest (complete when written; see ``check`` for validity)."""
        return sorted(self._manifest["videos"])

    def path(self, video_id: str) -> Path:
        if not isinstance(video_id, str) or not _SAFE_ID.match(video_id):
            raise ValueError(f"video id {video_id!r} cannot name a cache file: expected letters, "
                             "digits and . _ + - (not starting with . or -)")
        return self.dir / f"{video_id}.npy"

    # -- validity --------------------------------------------------------------------------
    def check(self, video_id: str, n_frames: int | None = None, deep: bool = False,
              frames: str | None = None) -> str | None:
        """None if the entry is valid, else why not (missing, wrong shape, truncated, ...).

        Cheap by default (manifest entry, file size, ``.npy`` header); ``deep=True`` also
        compares the file's CRC-32 with the one recorded when it was written.
        """
        entry = self._manifest["videos"].get(video_id)
        if entry is None:
            return "not in manifest"
        path = self.path(video_id)
        if n_frames is not None and entry["n_frames"] != n_frames:
            return f"manifest has {entry['n_frames']} frames, expected {n_frames}"
        if frames is not None and entry.get("frames") != frames:
            return "its frame images changed since the features were computed (size, time or path)"
        try:
            size = path.stat().st_size
        except OSError:
            return f"file {path} missing"
        if size != entry["bytes"]:
            return f"file {path} has {size} bytes, manifest says {entry['bytes']}"
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            return f"file {path} unreadable: {e}"
        expect = (entry["n_frames"], self.feature_dim)
        if arr.shape != expect or arr.dtype != FEATURE_DTYPE:
            return f"file {path} holds {arr.dtype} {arr.shape}, expected float16 {expect}"
        if deep and _crc32_file(path) != entry["crc32"]:
            return f"file {path} fails its CRC-32 check"
        return None

    def has(self, video_id: str, n_frames: int | None = None, deep: bool = False) -> bool:
        """True when a valid entry for ``video_id`` (with ``n_frames`` frames, if given) exists."""
        return self.check(video_id, n_frames, deep) is None

    # -- read / write ----------------------------------------------------------------------
    def load_features(self, video_id: str) -> np.memmap:
        """Features [T, D] float16, memory-mapped read-only. Raises KeyError / ValueError."""
        reason = self.check(video_id)
        if reason is not None:
            if video_id not in self._manifest["videos"]:
                raise KeyError(f"no features for video {video_id!r} in cache {self.dir}")
            raise ValueError(f"cache entry of video {video_id!r} is invalid: {reason}; "
                             "run the extraction again to rebuild it")
        return np.load(self.path(video_id), mmap_mode="r")

    def write(self, video_id: str, features: np.ndarray, bad_frames=(), frames: str | None = None) -> Path:
        """Store features [T, D] (cast to float16) atomically, then record them in the manifest.

        bad_frames: 0-based frames whose image could not be decoded (their rows hold a
        neighbour's feature); recorded so that training masks them like missing frames."""
        feats = np.ascontiguousarray(features, dtype=FEATURE_DTYPE)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise ValueError(f"features of {video_id!r} must be [T, D] with T >= 1, got {feats.shape}")
        dim = self.feature_dim
        if dim is not None and feats.shape[1] != dim:
            raise ValueError(f"features of {video_id!r} have D={feats.shape[1]}, cache holds D={dim}")
        path = self.path(video_id)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a name
                np.save(f, feats)

        atomic_write_with(path, save)
        self._manifest["feature_dim"] = int(feats.shape[1])
        entry = self._manifest["videos"][video_id] = {
            "n_frames": int(feats.shape[0]), "bytes": path.stat().st_size,
            "crc32": _crc32_file(path), "bad_frames": [int(i) for i in bad_frames], "frames": frames}
        if self._part_path is None:
            atomic_write_json(self.manifest_path, self._manifest)
        else:   # only this writer's entries: the parts of several ranks never overlap
            self._written[video_id] = entry
            atomic_write_json(self._part_path, {**self._manifest, "videos": self._written})
        return path

    def bad_frames(self, video_id: str) -> np.ndarray:
        """0-based frames of ``video_id`` whose image could not be decoded (int64, maybe empty)."""
        entry = self._manifest["videos"].get(video_id) or {}
        return np.asarray(entry.get("bad_frames", []), np.int64)

    def mask_bad_frames(self, records: Sequence[Any]) -> list:
        """Records with their undecodable frames marked absent (``frame_present`` False), so
        they train nothing, as missing frames (they are still scored)."""
        import dataclasses

        out = []
        for r in records:
            bad = self.bad_frames(r.video_id)
            if len(bad):
                present = np.asarray(r.frame_present, bool).copy()
                present[bad[bad < len(present)]] = False
                r = dataclasses.replace(r, frame_present=present)
            out.append(r)
        return out

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temp files a killed writer left behind (one writer per cache folder assumed;
        a part writer of a sharded run deletes nothing: another rank may be writing)."""
        if self._part_path is not None:
            return []
        stale = [p for p in self.dir.glob(".*.tmp")] if self.dir.is_dir() else []
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def forget(self, video_id: str) -> None:
        """Drop an entry (the file is replaced on the next write)."""
        if self._manifest["videos"].pop(video_id, None) is not None:
            atomic_write_json(self.manifest_path, self._manifest)


# -- extraction --------------------------------------------------------------------------------

def _encode_batches(paths: Sequence[Path], encoder, batch_size: int, device, num_threads: int,
                    backend: str) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (index [B], features [B, D] float16, decoded [B] bool) for ``paths`` in order
    through the encoder (decoded False: corrupt / truncated image, see FrameLoader)."""
    import torch

    from affaccel.device import autocast
    from affaccel.video.frames import FrameLoader

    loader = FrameLoader(
        [str(p) for p in paths], labels=None, batch_size=batch_size, image_size=encoder.image_size,
        mean=encoder.mean, std=encoder.std, device=str(device), train=False,
        num_threads=num_threads, backend=backend)
    with torch.inference_mode(), autocast(device, encoder.config.precision):
        for batch in loader:
            feats = encoder(batch["images"].to(device, non_blocking=True))
            yield (batch["index"].cpu().numpy().astype(np.int64),
                   feats.to(torch.float16).cpu().numpy(), batch["ok"].numpy())


class _Assembler:
    """Places batch rows into per-video buffers and flushes each video once it is complete."""

    def __init__(self, records: Sequence[Any], cache: FeatureCache,
                 on_video_done: Callable[[str], None] | None):
        self.records = records
        self.cache = cache
        self.on_video_done = on_video_done
        lengths = np.array([r.n_frames for r in records], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.buffers: dict[int, np.ndarray] = {}
        self.decoded: dict[int, np.ndarray] = {}
        self.filled = np.zeros(len(records), dtype=np.int64)
        self.done: list[str] = []
        self.failed: dict[str, str] = {}

    def add(self, index: np.ndarray, feats: np.ndarray, ok: np.ndarray | None = None) -> int:
        ok = np.ones(len(index), bool) if ok is None else np.asarray(ok, bool)
        vids = np.searchsorted(self.starts, index, side="right") - 1
        for v in np.unique(vids):
            rows = vids == v
            buf = self.buffers.get(v)
            if buf is None:
                buf = self.buffers[v] = np.zeros((self.records[v].n_frames, feats.shape[1]),
                                                 dtype=FEATURE_DTYPE)
                self.decoded[v] = np.zeros(self.records[v].n_frames, bool)
            buf[index[rows] - self.starts[v]] = feats[rows]
            self.decoded[v][index[rows] - self.starts[v]] = ok[rows]
            self.filled[v] += int(rows.sum())
            if self.filled[v] == self.records[v].n_frames:
                self._flush(int(v))
        return len(index)

    def _flush(self, v: int) -> None:
        vid = self.records[v].video_id
        feats, decoded = self.buffers.pop(v), self.decoded.pop(v)
        if not decoded.any():
            self.failed[vid] = "no frame image of this video could be decoded"
            log.error("video %s: features not extracted: %s", vid, self.failed[vid])
            return
        bad = np.nonzero(~decoded)[0]
        if len(bad):   # like a missing frame: the previous decodable frame's feature (leading: the first)
            src = np.maximum.accumulate(np.where(decoded, np.arange(len(decoded)), -1))
            src[src < 0] = int(np.argmax(decoded))
            feats = feats[src]
        self.cache.write(vid, feats, bad_frames=bad, frames=frames_fingerprint(self.records[v]))
        self.done.append(vid)
        if self.on_video_done is not None:
            self.on_video_done(vid)


def _validate_record(r: Any) -> None:
    n = r.n_frames
    if n < 1 or len(r.frame_paths) != n:
        raise ValueError(f"video {r.video_id!r}: {len(r.frame_paths)} frame paths for "
                         f"n_frames={n} (expected one path per frame, n_frames >= 1)")


def _pending(records: Sequence[Any], cache: FeatureCache, verify: bool) -> tuple[list, list]:
    """(records still to extract, ids already valid in the cache); checks the records first."""
    seen: set[str] = set()
    for r in records:
        if r.video_id in seen:
            raise ValueError(f"video id {r.video_id!r} appears twice in the records")
        seen.add(r.video_id)
        _validate_record(r)
    pending, skipped = [], []
    for r in records:
        reason = cache.check(r.video_id, r.n_frames, deep=verify, frames=frames_fingerprint(r))
        if reason is None:
            skipped.append(r.video_id)
        else:
            if reason != "not in manifest":
                log.warning("rebuilding features of %s: %s", r.video_id, reason)
            pending.append(r)
    return pending, skipped


def _retry_one_by_one(pending, asm: _Assembler, encode, cache, on_video_done, bar, failed: dict) -> None:
    """One unreadable frame stops a pipeline over all videos; redo the unfinished videos one by
    one so a bad video is reported and the others still get their features."""
    for r in pending:
        if r.video_id in asm.done or r.video_id in asm.failed:
            continue
        try:
            one = _Assembler([r], cache, on_video_done)
            for index, feats, ok in encode(r.frame_paths):
                one.add(index, feats, ok)
            if r.video_id in one.failed:
                raise ValueError(one.failed[r.video_id])
            if not one.done:
                raise RuntimeError(f"frame pipeline returned {one.filled[0]} of {r.n_frames} frames")
            asm.done.append(r.video_id)
            bar.update(r.n_frames)
        except (OSError, RuntimeError, ValueError) as err:
            failed[r.video_id] = f"{type(err).__name__}: {err}"
            log.error("video %s: features not extracted: %s", r.video_id, err)


def extract_features(records: Sequence[Any], encoder, cache: FeatureCache, batch_size: int = 256,
                     device: str = "cpu", progress: bool = True, num_threads: int = 2,
                     backend: str = "auto", on_video_done: Callable[[str], None] | None = None,
                     verify: bool = False) -> dict:
    """Run every frame of every video through ``encoder`` in frame order into ``cache``.

    Args:
        records: VideoRecord-like objects with ``video_id``, ``n_frames`` and ``frame_paths``
            (len n_frames; a missing frame already points at a neighbour's file, so its feature is
            the neighbour's, and ``frame_present`` masks it downstream).
        encoder: ClipEncoder; its ``image_size``/``mean``/``std`` drive the frame pipeline.
        cache: FeatureCache of this encoder (``FeatureCache.for_encoder``).
        device: "cpu" or "cuda[:i]"; bf16 autocast on GPU unless the encoder's precision says fp32.
        on_video_done: called with each video id right after its features are stored.
        verify: also CRC-check existing entries before skipping them (reads every cached byte).

    Returns {"extracted": [ids], "skipped": [ids], "failed": {id: error}, "frames": int}.
    Videos already in the cache are skipped, so an interrupted run resumes where it stopped.
    A video whose frames cannot be read is reported in "failed" and the others go on.
    """
    import torch
    from tqdm.auto import tqdm

    if encoder.identity() != cache.encoder_identity:
        raise ValueError("extract_features: the cache belongs to another encoder "
                         f"(cache {cache.encoder_identity}, encoder {encoder.identity()})")
    pending, skipped = _pending(records, cache, verify)
    result = {"extracted": [], "skipped": skipped, "failed": {}, "frames": 0}
    if not pending:
        return result
    cache.remove_stale_temp_files()
    device = torch.device(device)
    encoder = encoder.eval().to(device)

    def encode(paths):
        return _encode_batches(paths, encoder, batch_size, device, num_threads, backend)

    bar = tqdm(total=sum(r.n_frames for r in pending), unit="frame", desc="extract", disable=not progress)
    asm = _Assembler(pending, cache, on_video_done)
    try:
        try:
            for index, feats, ok in encode([p for r in pending for p in r.frame_paths]):
                bar.update(asm.add(index, feats, ok))
        except (OSError, RuntimeError, ValueError) as e:
            log.warning("extraction over all videos failed (%s); retrying video by video", e)
            _retry_one_by_one(pending, asm, encode, cache, on_video_done, bar, result["failed"])
    finally:
        bar.close()
    result["failed"].update(asm.failed)
    for r in pending:
        if r.video_id not in asm.done and r.video_id not in result["failed"]:
            result["failed"][r.video_id] = "frame pipeline ended before all frames of this video were seen"
    result["extracted"] = list(asm.done)
    result["frames"] = sum(r.n_frames for r in pending if r.video_id in set(asm.done))
    return result


# ----------------------------------------------------------------------------- stage 2 entry
def default_cache_root() -> Path:
    from affaccel import env

    return env.home() / "features"


def load_encoder(checkpoint: str | None = None, model: str | None = None,
                 pretrained: str | None = None):
    """The encoder to extract with: an affaccel checkpoint, or an open_clip model (tag or random)."""
    from affaccel.config import CPU_MODEL, ClipConfig
    from affaccel.nn.clip import build_encoder, load_encoder_checkpoint

    if checkpoint:
        if model or pretrained:
            raise ValueError("--checkpoint already fixes the model; drop --model/--pretrained")
        return load_encoder_checkpoint(checkpoint)
    return build_encoder(ClipConfig(model_name=model or CPU_MODEL, pretrained=pretrained)).eval()


def extract_dataset(data_root=None, checkpoint=None, cache_root=None, model=None, pretrained=None,
                    batch_size: int = 256, device: str = "cpu", splits=("train", "val"), progress=True,
                    verify: bool = False, backend: str = "auto", int8: bool = False) -> tuple[Path, dict]:
    """Extract features for every video of ``data_root`` (default: built-in synthetic set): a
    dataset folder, or the dict of ``affaccel.data.layout.data_arguments`` (root / annotations /
    frames).

    int8: extract with the dynamic-int8 copy of the encoder (``affaccel.nn.quantize``, CPU only;
    its own cache folder). Returns (cache folder of this encoder, summary from ``extract_features``).
    """
    from affaccel.data.affwild2 import load_affwild2

    where = data_root if isinstance(data_root, dict) else {"root": data_root}
    if where.get("root") is None and where.get("annotations") is None:
        from affaccel.data.synthetic import ensure_synthetic

        where = {"root": ensure_synthetic("default")}
    records = list(load_affwild2(where["root"], splits=tuple(splits), annotations=where.get("annotations"),
                                 frames=where.get("frames")).videos)
    from affaccel import distributed

    encoder = load_encoder(checkpoint, model, pretrained)
    if int8:
        from affaccel.nn.quantize import quantize_encoder

        encoder = quantize_encoder(encoder)
    cache = FeatureCache.for_encoder(cache_root or default_cache_root(), encoder)
    options = dict(batch_size=batch_size, device=device, progress=progress, verify=verify, backend=backend)
    info = distributed.get_info()
    if info.distributed:
        return cache.dir, extract_sharded(records, encoder, cache, info, **options)
    cache.merge_parts()   # entries of an interrupted sharded run (none: nothing happens)
    return cache.dir, extract_features(records, encoder, cache, **options)


def extract_sharded(records: Sequence[Any], encoder, cache: FeatureCache, info, verify: bool = False,
                    progress: bool = True, **options) -> dict:
    """:func:`extract_features` across the ranks of a process group (``torchrun``).

    Rank 0 folds in what an interrupted run left, finds the videos still to extract and
    broadcasts them; each rank takes a balanced share (``distributed.shard_by_size`` by frame
    count), writes its ``.npy`` files and a manifest part of its own; after all ranks are done,
    rank 0 merges the parts into ``manifest.json`` (atomically) and every rank returns the same
    summary, with ``"shards"``: the ids each rank extracted. ``info``: ``distributed.get_info()``.
    """
    from affaccel import distributed

    plan = None
    if info.is_main:
        cache.merge_parts()
        cache.remove_stale_temp_files()
        pending, skipped = _pending(records, cache, verify)
        plan = ([r.video_id for r in pending], skipped)
    pending_ids, skipped = distributed.broadcast_object(plan)
    cache.reload()
    by_id = {r.video_id: r for r in records}
    pending = [by_id[v] for v in pending_ids]
    share = [pending[i] for i in distributed.shard_by_size([r.n_frames for r in pending], info.world_size,
                                                            info.rank)]
    cache.write_to_part(info.rank)
    try:
        mine = extract_features(share, encoder, cache, verify=verify, progress=progress and info.is_main,
                                **options)
    except Exception as e:  # noqa: BLE001 - the other ranks wait in the gather below: never leave them there
        mine = {"extracted": [], "skipped": [], "frames": 0,
                "failed": {r.video_id: f"rank {info.rank}: {type(e).__name__}: {e}" for r in share}}
    results = distributed.all_gather_object(mine)
    if info.is_main:
        cache.merge_parts()
    distributed.barrier()   # on every rank, the manifest is complete once this returns
    failed: dict = {}
    for r in results:
        failed.update(r["failed"])
    return {"extracted": [v for r in results for v in r["extracted"]], "skipped": skipped, "failed": failed,
            "frames": sum(r["frames"] for r in results), "shards": [list(r["extracted"]) for r in results]}


__all__ = ["FeatureCache", "extract_features", "extract_sharded", "cache_key", "default_cache_root", "load_encoder",
           "extract_dataset"]
