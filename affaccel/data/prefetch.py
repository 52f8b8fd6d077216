"""Batches on their way to the training device one step ahead of the loop that uses them.

On CUDA, :func:`prefetch` pins the next batch's tensors (``pin_memory()``) and copies them with
``non_blocking=True`` on a side stream while the current step's kernels run; the main stream
waits for the copy (an event, not a host sync) just before the batch is handed out, and the
device tensors are marked as used by the main stream (``record_stream``) so the caching
allocator does not hand their memory to the side stream's next copy too early. Elsewhere it is
a plain pass-through: each batch is moved with ``.to(device)`` when it is asked for (a no-op on
CPU). ``pin_memory()`` needs a CUDA driver, so it is only called when the device is CUDA.

The batches, their order and their values are those of the wrapped iterable: only where the
tensors live and when they are copied change.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator


def map_tensors(obj: Any, fn: Callable) -> Any:
    """``obj`` with ``fn`` applied to every torch tensor in it: tensors, dataclasses, dicts,
    lists and tuples are walked; anything else (NumPy arrays, numbers) is returned as it is."""
    import torch

    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def one_ahead(items: Iterable, start: Callable, finish: Callable) -> Iterator:
    """Yield ``finish(start(item))`` for every item, in order, with ``start`` of the next item
    called before the current one is yielded (after its ``finish``), so the next item's
    transfer is under way while the caller works on the current one."""
    it = iter(items)
    try:
        pending = start(next(it))
    except StopIteration:
        return
    while True:
        current = finish(pending)
        try:
            pending = start(next(it))
        except StopIteration:
            yield current
            return
        yield current


def prefetch(batches: Iterable, device, enabled: bool = True) -> Iterator:
    """The items of ``batches`` with every tensor in them moved to ``device``
    (:func:`map_tensors`): through pinned memory and ``non_blocking`` copies on a side CUDA
    stream, one batch ahead, when ``device`` is CUDA and ``enabled``; otherwise ``.to(device)``
    on demand."""
    import torch

    device = torch.device(device)
    if not enabled or device.type != "cuda":
        for item in batches:
            yield map_tensors(item, lambda t: t.to(device))
        return
    stream = torch.cuda.Stream(device)

    def start(item):
        with torch.cuda.stream(stream):
            return map_tensors(item, lambda t: _pinned(t).to(device, non_blocking=True))

    def finish(item):
        main = torch.cuda.current_stream(device)
        main.wait_stream(stream)
        map_tensors(item, lambda t: t.record_stream(main) if t.is_cuda else None)
        return item

    yield from one_ahead(batches, start, finish)


def _pinned(t):
    """``t`` in page-locked host memory (CPU tensors only; a CUDA tensor is left as it is)."""
    if t.is_cuda or t.is_pinned():
        return t
    return t.pin_memory()
