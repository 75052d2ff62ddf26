"""Host <-> device copies in ONE place: an explicit device, an explicit stream, a ring of reused pinned buffers.

Every CUDA operation of a :class:`DeviceStage` runs inside :meth:`DeviceStage.scope`, which enters
``torch.cuda.device(stage.device)`` AND ``torch.cuda.stream(stage.stream)`` -- the stream was created on that
device. So a single-process ``cuda:1`` never depends on the process's current device (which stays ``cuda:0``
unless torchrun set it), and every event is recorded on the stream that issued the copies it guards.

Host staging memory is a :class:`HostRing` of ``slots`` (>= 2) byte buffers, pinned on CUDA, allocated once
(grown only when a larger batch arrives) and reused round-robin. A slot is handed out again only after

- its event (recorded on the stage stream after the copy) has completed, and
- for device -> host results, the :class:`Staged` result that views it has been *released*: its tensors
  were copied into ordinary memory first, so a consumer holding a result never sees the slot overwritten.

Users: extraction (loader batches up, features down: :mod:`svgfeat.extraction.encode`), ``cache.to(device)``
(:mod:`svgfeat.cache.device`), the device JPEG decoder (runs inside the extraction scope) and the streamed DiT
latent batches (:class:`svgfeat.generation.train.LatentBatcher`, ``to_device(..., handoff=True)``).
On CPU the stage is a no-op: ``to_device``/``to_host`` return CPU tensors, no ring, no stream, no event.
"""

from __future__ import annotations

import contextlib
import threading

import torch

ALIGN = 256  # byte offset of each tensor packed into a slot (keeps every view aligned for any dtype)


def _nbytes(shape, dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty(0, dtype=dtype).element_size()


def _round_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def resolve_device(device) -> torch.device:
    """``torch.device`` with an explicit index on CUDA (``"cuda"`` -> the current device *now*, once)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from .errors import ConfigError

            raise ConfigError(f"device {str(device)!r}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use device='cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            from .errors import ConfigError

            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) "
                              f"are visible (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return dev


class HostRing:
    """``slots`` reusable host byte buffers (pinned when ``pin``), handed out round-robin.

    ``acquire(nbytes)`` returns ``(index, uint8 buffer of >= nbytes)`` after waiting for whatever guards
    that slot (:meth:`guard`): an event to synchronise and/or a holder to release. Buffers are allocated
    on first use of a slot and re-allocated only when a larger request arrives; the count of allocations
    is kept in ``allocations`` (tests check that it does not grow with the number of batches).
    """

    def __init__(self, slots: int = 2, pin: bool = True):
        if slots < 2:
            raise ValueError(f"a host ring needs at least 2 slots (one filling, one in flight), got {slots}")
        self.pin = pin
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.events: list = [None] * slots
        self.holders: list = [None] * slots
        self.next = 0
        self.allocations = 0

    def __len__(self):
        return len(self.buffers)

    def acquire(self, nbytes: int) -> tuple[int, torch.Tensor]:
        i = self.next
        self.next = (i + 1) % len(self.buffers)
        holder, self.holders[i] = self.holders[i], None
        if holder is not None:
            holder.release()  # copies its views out of slot i (after its event) before we overwrite them
        ev, self.events[i] = self.events[i], None
        if ev is not None:
            ev.synchronize()  # the copy that last used slot i has finished
        buf = self.buffers[i]
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, pin_memory=self.pin)
            self.buffers[i] = buf
            self.allocations += 1
        return i, buf

    def guard(self, i: int, event=None, holder=None) -> None:
        """Slot ``i`` may be reused only after ``event`` completed and ``holder.release()`` ran."""
        self.events[i], self.holders[i] = event, holder

    def drain(self) -> None:
        """Release every holder and wait for every event (the ring then owns no in-flight data)."""
        for i in range(len(self.buffers)):
            h, self.holders[i] = self.holders[i], None
            if h is not None:
                h.release()
            ev, self.events[i] = self.events[i], None
            if ev is not None:
                ev.synchronize()


def pack_views(buf: torch.Tensor, specs: dict) -> dict:
    """{name: (shape, dtype)} -> {name: tensor view into the uint8 buffer ``buf``} (ALIGN-ed offsets)."""
    out, off = {}, 0
    for name, (shape, dtype) in specs.items():
        n = _nbytes(shape, dtype)
        out[name] = buf[off:off + n].view(dtype).view(tuple(shape))
        off += _round_up(n)
    return out


def packed_size(specs: dict) -> int:
    return sum(_round_up(_nbytes(shape, dtype)) for shape, dtype in specs.values())


class Staged:
    """Device -> host result: tensors viewing a ring slot until :meth:`release` copies them out.

    ``wait()`` (any thread) returns the host tensors, in ordinary memory, after the copy's event completed.
    Thread-safe: the writer thread may call ``wait`` while the producer thread reclaims the slot.
    """

    def __init__(self, groups: dict, event=None):
        self._groups, self._event, self._staged = groups, event, event is not None
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._staged:
                self._event.synchronize()  # the D2H copies into the slot have landed
                self._groups = {g: v.clone() for g, v in self._groups.items()}  # out of the slot
                self._event, self._staged = None, False

    def wait(self) -> dict:
        self.release()
        return self._groups


class DeviceStage:
    """An explicit device + stream + host ring (see module doc). ``slots`` >= 2 (ring depth)."""

    def __init__(self, device, slots: int = 3):
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = None
        self.up = self.down = None
        if self.cuda:
            with torch.cuda.device(self.device):
                self.stream = torch.cuda.Stream(device=self.device)
            self.up = HostRing(slots, pin=True)  # host -> device staging
            self.down = HostRing(slots, pin=True)  # device -> host staging

    def scope(self):
        """Context in which every CUDA op targets ``self.device`` on ``self.stream`` (no-op on CPU)."""
        if not self.cuda:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(self.device))
        stack.enter_context(torch.cuda.stream(self.stream))
        return stack

    def _event(self):
        """An event recorded NOW on the stage stream (call inside :meth:`scope`)."""
        ev = torch.cuda.Event()
        ev.record(self.stream)
        return ev

    def to_device(self, x: torch.Tensor, handoff: bool = False) -> torch.Tensor:
        """CPU tensor -> the same values on the device, copied through a pinned ring slot on the stage stream.
        The returned tensor is ready for any later op issued on the stage stream (use it inside ``scope``).
        ``handoff``: for a caller that uses the result on ITS current stream outside ``scope``: that stream
        waits for the copy's event and the tensor is recorded as used there (allocator safety)."""
        if not self.cuda:
            return x.to(self.device)
        if x.device.type == "cuda":
            with self.scope():
                out = x.to(self.device, non_blocking=True)
                ev = self._event()
        else:
            x = x.contiguous()
            i, buf = self.up.acquire(_nbytes(x.shape, x.dtype))
            host = pack_views(buf, {"x": (x.shape, x.dtype)})["x"]
            host.copy_(x)
            with self.scope():
                out = x.new_empty(x.shape, device=self.device)  # allocated on the stage stream
                out.copy_(host, non_blocking=True)
                ev = self._event()
                self.up.guard(i, ev)
        if handoff:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(ev)
            out.record_stream(consumer)
        return out

    def to_host(self, tensors: dict) -> Staged:
        """{name: device tensor} -> :class:`Staged` (asynchronous D2H into a pinned ring slot, event on the
        stage stream). On CPU: the tensors themselves, already final."""
        if not self.cuda:
            return Staged({g: v.cpu() for g, v in tensors.items()})
        specs = {g: (tuple(v.shape), v.dtype) for g, v in tensors.items()}
        i, buf = self.down.acquire(packed_size(specs))
        host = pack_views(buf, specs)
        with self.scope():
            for g, v in tensors.items():
                host[g].copy_(v, non_blocking=True)
            staged = Staged(host, self._event())
        self.down.guard(i, holder=staged)
        return staged

    def upload_into(self, out: torch.Tensor, blocks) -> None:
        """Fill device tensor ``out`` block by block: ``blocks`` yields ``(a, b, dtype, fill)`` where
        ``fill(host)`` writes rows [a, b) into ``host``, a host tensor of that ``dtype`` (a pinned ring slot on
        CUDA); the values are converted to ``out.dtype`` on the device. Returns after every copy landed."""
        shape = tuple(out.shape[1:])
        for a, b, dtype, fill in blocks:
            if not self.cuda:
                if out.dtype == dtype:
                    fill(out[a:b])
                else:
                    tmp = torch.empty((b - a, *shape), dtype=dtype)
                    fill(tmp)
                    out[a:b].copy_(tmp)
                continue
            i, buf = self.up.acquire(_nbytes((b - a, *shape), dtype))
            host = pack_views(buf, {"x": ((b - a, *shape), dtype)})["x"]
            fill(host)
            with self.scope():
                out[a:b].copy_(host, non_blocking=True)
                self.up.guard(i, self._event())
        self.synchronize()

    def synchronize(self) -> None:
        """Wait for everything issued on the stage stream (no-op on CPU)."""
        if self.cuda:
            self.stream.synchronize()

    def close(self) -> None:
        """Release all host slots (results are copied out) and wait for the stream."""
        if self.cuda:
            self.down.drain()
            self.up.drain()
            self.synchronize()
