"""Bucketed, versioned, checksummed weight broadcast from learner rank 0 to every rollout engine.

One process group (learner rank 0 + one rank per rollout worker) separate from the learner's own
FSDP group, built from a TCPStore + PrefixStore; NCCL on CUDA, gloo on CPU — same code.
Tensors of any dtype are laid out as raw bytes in flat uint8 buckets of `bucket_mb`; every bucket
carries a checksum, every sync a version. Two wires (`SyncPlan.wire`, chosen from the sender's device):

- `packed` (CUDA tensors, NCCL): each bucket is packed into one buffer and moved by one collective
  (packing on the GPU is cheap, many small collectives are not).
- `per_tensor` (CPU tensors, gloo): each tensor is broadcast straight from its own storage into its
  slot of the receiver's bucket buffer; the bucket stays the unit of checksum, version and flow
  control. Measured on gloo (benchmarks/sync.py, RESULTS.md): packing a CPU bucket costs a copy at
  ~3.5 GB/s, more than the loopback transfer itself, and a freshly allocated buffer page-faults at
  < 1 GB/s, so the zero-copy wire into reused receive buffers is the fast one.

Checksums: xxh3-64 on CPU (xxhash, 19-26 GB/s here, about one core's read speed; zlib's crc32 was
2.3 GB/s and showed up in the sync time), a position-weighted word sum on CUDA (no host copy).
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Iterable

import msgspec
import torch
import torch.distributed as dist
import xxhash

from ..models.names import memory_name


class WeightSyncError(RuntimeError):
    pass


class TensorSpec(msgspec.Struct, frozen=True):
    name: str  # checkpoint name (what vLLM's load_weights and HF load expect)
    dtype: str
    shape: tuple[int, ...]
    offset: int  # byte offset in its bucket
    nbytes: int


class BucketSpec(msgspec.Struct, frozen=True):
    nbytes: int
    checksum: int
    tensors: tuple[TensorSpec, ...]


WIRES = ("packed", "per_tensor")


class SyncPlan(msgspec.Struct, frozen=True):
    version: int
    buckets: tuple[BucketSpec, ...]
    wire: str = "packed"  # packed | per_tensor (see the module docstring)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)


_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16, torch.float16,
                                                        torch.float64, torch.int64, torch.int32, torch.uint8)}


ALIGN = 16


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def make_group(host: str, port: int, rank: int, world_size: int, backend: str = "gloo",
               timeout_s: float = 600.0, name: str = "tempsamp-weights", device: torch.device | None = None):
    """A standalone process group (does not touch the default group). Returns (group, store)."""
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout,
                          wait_for_workers=False)
    prefix = dist.PrefixStore(name, store)
    if backend == "gloo":
        pg = dist.ProcessGroupGloo(prefix, rank, world_size, timeout)
    elif backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(prefix, rank, world_size, opts)
        if device is not None:  # eager init so the first broadcast does not stall
            pg.broadcast(torch.zeros(1, device=device), 0).wait()
    else:
        raise ValueError(f"unknown weight-sync backend {backend!r}")
    return pg, store


# bucket size per backend, chosen from benchmarks/sync.py (RESULTS.md, sync 2026-11-29): on gloo the
# per_tensor wire ran 2.3-2.5 GB/s with 64 MB buckets, within noise of 256 MB and ahead of 32 MB, and a
# receiver's ring holds IN_FLIGHT + 1 buckets; NCCL is not measured here (needs two GPUs) and keeps the
# 256 MB of before.
BUCKET_MB = {"gloo": 64, "nccl": 256}


def bucket_mb_for(backend: str, configured: int = 0) -> int:
    """sync.bucket_mb when set (> 0), else the measured default of `backend`."""
    if configured > 0:
        return configured
    if backend not in BUCKET_MB:
        raise ValueError(f"unknown weight-sync backend {backend!r} (known: {', '.join(BUCKET_MB)})")
    return BUCKET_MB[backend]


def checksum(buf: torch.Tensor) -> int:
    """xxh3-64 of the bucket bytes on CPU; on GPU a position-weighted sum over int32 words (no host
    copy). Catches corruption, truncation and reordering."""
    if buf.device.type == "cpu":
        return xxhash.xxh3_64_intdigest(buf.view(torch.uint8).numpy())
    n = buf.numel() // 4 * 4
    words = buf[:n].view(torch.int32).to(torch.int64)
    w = torch.arange(words.numel(), device=buf.device, dtype=torch.int64) % 65521 + 1
    tail = buf[n:].to(torch.int64).sum()
    return int(((words * w).sum() + tail).item()) & 0xFFFFFFFFFFFF


def parts_checksum(parts: Iterable[torch.Tensor]) -> int:
    """Checksum of the per_tensor wire: xxh3-64 over the tensors' bytes in order (no padding), the
    same value whether taken over the sender's tensors or the receiver's bucket slices."""
    h = xxhash.xxh3_64()
    for p in parts:
        if p.numel():
            h.update(p.detach().view(torch.uint8).reshape(-1).cpu().numpy())
    return h.intdigest()


def to_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


class BufferRing:
    """`slots` reusable bucket buffers handed out in turn. A buffer freshly allocated for every bucket
    page-faults while it is filled (measured < 1 GB/s here); a ring touches its pages once. The caller
    must be done with buffer k before it takes buffer k + slots."""

    def __init__(self, slots: int):
        self.slots = max(1, slots)
        self._bufs: list[torch.Tensor | None] = [None] * self.slots
        self._next = 0

    def take(self, nbytes: int, device: torch.device | str) -> torch.Tensor:
        i = self._next % self.slots
        self._next += 1
        b = self._bufs[i]
        if b is None or b.numel() < nbytes or b.device != torch.device(device):
            b = self._bufs[i] = None  # free the old one before allocating its replacement
            b = self._bufs[i] = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return b[:nbytes]


STREAMED = -1  # BucketSpec.checksum: the checksum follows its bucket on the wire (see send_streaming)
IN_FLIGHT = 3  # buckets posted ahead: transfer of bucket i+1.. overlaps the checksum/load of bucket i


def plan_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int,
                 version: int, wire: str = "auto") -> tuple[SyncPlan, list[list[torch.Tensor]]]:
    """Layout of the buckets (each <= bucket_bytes unless one tensor is larger; every tensor starts
    16-byte aligned so its bytes can be viewed as its dtype) without copying anything, and the tensors
    of each bucket in order. Every bucket's checksum is STREAMED: `send_streaming` sends each bucket
    and its checksum right after it. (`receive_plan` also accepts a plan whose buckets carry their
    checksum in the plan itself; then no checksum follows on the wire.) `wire` auto = per_tensor for
    CPU tensors, packed otherwise."""
    named = list(named)
    if wire == "auto":
        wire = "per_tensor" if all(t.device.type == "cpu" for _, t in named) else "packed"
    if wire not in WIRES:
        raise ValueError(f"unknown wire {wire!r} (known: {', '.join(WIRES)})")
    buckets: list[BucketSpec] = []
    groups: list[list[torch.Tensor]] = []
    cur: list[tuple[str, torch.Tensor]] = []
    cur_bytes = 0

    def flush():
        nonlocal cur, cur_bytes
        if not cur:
            return
        specs, off = [], 0
        for name, t in cur:
            off += -off % ALIGN
            n = t.numel() * t.element_size()
            specs.append(TensorSpec(name, str(t.dtype).removeprefix("torch."), tuple(t.shape), off, n))
            off += n
        buckets.append(BucketSpec(nbytes=off, checksum=STREAMED, tensors=tuple(specs)))
        groups.append([t for _, t in cur])
        cur, cur_bytes = [], 0

    for name, t in named:
        n = t.numel() * t.element_size()
        if cur and cur_bytes + n > bucket_bytes:
            flush()
        cur.append((name, t))
        cur_bytes += n
    flush()
    return SyncPlan(version=version, buckets=tuple(buckets), wire=wire), groups


def fill_bucket(spec: BucketSpec, tensors: list[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """Copy a bucket's tensors into one flat uint8 buffer (`out`, or a new one) at their planned
    offsets; the alignment gaps are zeroed, so the bytes depend on the tensors only."""
    buf = torch.empty(spec.nbytes, dtype=torch.uint8, device=tensors[0].device) if out is None else out
    end = 0
    for ts, t in zip(spec.tensors, tensors):
        if ts.offset > end:
            buf[end: ts.offset].zero_()
        buf[ts.offset: ts.offset + ts.nbytes].copy_(to_bytes(t))
        end = ts.offset + ts.nbytes
    return buf


def _int64(x: int, device) -> torch.Tensor:
    """A checksum as one int64 tensor (xxh3 is unsigned 64-bit: stored as its two's complement)."""
    return torch.tensor([x - (1 << 64) if x >= 1 << 63 else x], dtype=torch.int64, device=device)


def _uint(t: torch.Tensor) -> int:
    return int(t.item()) & 0xFFFFFFFFFFFFFFFF


_SEND_RING = BufferRing(IN_FLIGHT + 1)  # packed wire on CPU: the sender's bucket buffers, kept across syncs


def send_streaming(pg, plan: SyncPlan, groups: list[list[torch.Tensor]], corrupt: bool = False) -> None:
    """Rank 0: for each bucket post its broadcast(s), checksum it while it travels, post the
    checksum, go on to the next bucket, with at most IN_FLIGHT buckets unfinished. packed wire: the
    bucket is packed first (one collective); per_tensor wire: every tensor goes from its own storage
    (no copy). `corrupt` (fault injection) sends bucket 0 with one byte flipped after its checksum was
    taken (the learner's tensors are never modified)."""
    works: list[list] = []
    for i, (spec, tensors) in enumerate(zip(plan.buckets, groups)):
        if plan.wire == "per_tensor":
            parts = [to_bytes(t) for t in tensors]
            wire = list(parts)
            if corrupt and i == 0:
                j = next(k for k, p in enumerate(parts) if p.numel())
                wire[j] = parts[j].clone()
                wire[j][0] ^= 0xFF
            bucket_works = [pg.broadcast(p, 0) for p in wire if p.numel()]
            crc = parts_checksum(parts)  # read while the bytes travel (broadcast only reads them too)
            parts, dev = wire, parts[0].device
        else:
            dev = tensors[0].device
            out = _SEND_RING.take(spec.nbytes, dev) if dev.type == "cpu" else None  # CUDA: the caching allocator
            buf = fill_bucket(spec, tensors, out)
            if corrupt and i == 0:
                crc = checksum(buf)
                buf[0] ^= 0xFF
                bucket_works = [pg.broadcast(buf, 0)]
            else:
                bucket_works = [pg.broadcast(buf, 0)]
                crc = checksum(buf)  # while it travels
            parts, dev = [buf], buf.device
        bucket_works.append(pg.broadcast(_int64(crc, dev), 0))
        works.append([bucket_works, parts])  # parts keep the packed/cloned buffers alive until sent
        if len(works) > IN_FLIGHT:  # bound the memory held by buckets in flight
            for w in works.pop(0)[0]:
                w.wait()
    for bucket_works, _ in works:
        for w in bucket_works:
            w.wait()


def unpack_bucket(spec: BucketSpec, buf: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    out = []
    for ts in spec.tensors:
        raw = buf[ts.offset: ts.offset + ts.nbytes]
        out.append((ts.name, raw.view(_DTYPES[ts.dtype]).reshape(ts.shape)))
    return out


def receive_plan(pg, plan: SyncPlan, device: torch.device | str = "cpu", verify: bool = True,
                 in_flight: int = IN_FLIGHT, ring: BufferRing | None = None):
    """Receiver side: yields (name, tensor) lists bucket by bucket as they arrive, with up to
    `in_flight` buckets posted ahead so verifying and loading one overlaps receiving the next.
    A bucket whose checksum differs is not yielded (never loaded); the remaining buckets are still
    received so the collective stays in step with the sender, then WeightSyncError names the bad
    buckets and the caller re-syncs the whole version.

    The yielded tensors are views of the bucket buffer. Without `ring` every bucket gets a new buffer
    (the views stay valid); with a `ring` of at least in_flight + 1 slots (kept across syncs by an
    engine) buffers are reused, so the caller must copy what it keeps before asking for the next
    bucket — what `load_weights` / `load_into_hf` do."""
    if ring is not None and ring.slots < in_flight + 1:
        raise ValueError(f"receive_plan: a ring of {ring.slots} slots needs in_flight <= {ring.slots - 1}")
    bad = []
    pending: list = []
    nxt = 0

    def post():
        nonlocal nxt
        spec = plan.buckets[nxt]
        if ring is None:
            buf = torch.empty(spec.nbytes, dtype=torch.uint8, device=device)
        else:
            buf = ring.take(spec.nbytes, device)
        if plan.wire == "per_tensor":
            works = [pg.broadcast(buf[ts.offset: ts.offset + ts.nbytes], 0) for ts in spec.tensors if ts.nbytes]
        else:
            works = [pg.broadcast(buf, 0)]
        crc_t = None
        if spec.checksum == STREAMED:
            crc_t = torch.zeros(1, dtype=torch.int64, device=device)
            works.append(pg.broadcast(crc_t, 0))
        pending.append((nxt, spec, buf, works, crc_t))
        nxt += 1

    while nxt < len(plan.buckets) and len(pending) < max(1, in_flight):
        post()
    while pending:
        i, spec, buf, works, crc_t = pending.pop(0)
        for w in works:
            w.wait()
        if nxt < len(plan.buckets):
            post()
        if verify:
            want = _uint(crc_t) if crc_t is not None else spec.checksum
            if plan.wire == "per_tensor":
                got = parts_checksum(buf[ts.offset: ts.offset + ts.nbytes] for ts in spec.tensors)
            else:
                got = checksum(buf)
            if got != want:
                bad.append(f"bucket {i} checksum {got} != {want}")
                continue
        yield unpack_bucket(spec, buf)
    if bad:
        raise WeightSyncError(f"weight sync v{plan.version}: {len(bad)} corrupted bucket(s): " + "; ".join(bad))


def load_into_hf(model: torch.nn.Module, named: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Copy checkpoint-named tensors into an HF model in place. Returns the count."""
    params = dict(model.named_parameters())
    n = 0
    for name, t in named:
        key = memory_name(name)
        if key not in params:
            raise WeightSyncError(f"weight sync: model has no parameter {key} (from {name})")
        with torch.no_grad():
            params[key].copy_(t.to(params[key].dtype))
        n += 1
    return n
