"""Bucketed, versioned, checksummed weight broadcast from learner rank 0 to every rollout engine.

One process group (learner rank 0 + one rank per rollout worker) separate from the learner's own
FSDP group, built from a TCPStore + PrefixStore; NCCL on CUDA, gloo on CPU — same code.
Tensors of any dtype are packed as raw bytes into flat uint8 buckets of `bucket_mb`, so one
collective moves many tensors; every bucket carries a checksum, every sync a version.
"""

from __future__ import annotations

import socket
import zlib
from datetime import timedelta
from typing import Iterable

import msgspec
import torch
import torch.distributed as dist

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


class SyncPlan(msgspec.Struct, frozen=True):
    version: int
    buckets: tuple[BucketSpec, ...]

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


def checksum(buf: torch.Tensor) -> int:
    """CRC32 of the bucket bytes on CPU (~GB/s); on GPU a position-weighted sum over int32 words
    (no host copy). Catches corruption, truncation and reordering."""
    if buf.device.type == "cpu":
        return zlib.crc32(buf.view(torch.uint8).numpy())
    n = buf.numel() // 4 * 4
    words = buf[:n].view(torch.int32).to(torch.int64)
    w = torch.arange(words.numel(), device=buf.device, dtype=torch.int64) % 65521 + 1
    tail = buf[n:].to(torch.int64).sum()
    return int(((words * w).sum() + tail).item()) & 0xFFFFFFFFFFFF


def to_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


STREAMED = -1  # BucketSpec.checksum: the checksum follows its bucket on the wire (see send_streaming)
IN_FLIGHT = 3  # buckets posted ahead: transfer of bucket i+1.. overlaps the checksum/load of bucket i


def plan_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int,
                 version: int) -> tuple[SyncPlan, list[list[torch.Tensor]]]:
    """Layout of the buckets (each <= bucket_bytes unless one tensor is larger; every tensor starts
    16-byte aligned so its bytes can be viewed as its dtype) without copying anything, and the tensors
    of each bucket in order. Every bucket's checksum is STREAMED: `send_streaming` packs each bucket
    and sends its checksum right after it. (`receive_plan` also accepts a plan whose buckets carry
    their checksum in the plan itself; then no checksum follows on the wire.)"""
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
    return SyncPlan(version=version, buckets=tuple(buckets)), groups


def fill_bucket(spec: BucketSpec, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Copy a bucket's tensors into one flat uint8 buffer at their planned offsets."""
    buf = torch.zeros(spec.nbytes, dtype=torch.uint8, device=tensors[0].device)
    for ts, t in zip(spec.tensors, tensors):
        buf[ts.offset: ts.offset + ts.nbytes].copy_(to_bytes(t))
    return buf


def send_streaming(pg, plan: SyncPlan, groups: list[list[torch.Tensor]], corrupt: bool = False) -> None:
    """Rank 0: pack bucket i, post its broadcast, checksum it while it travels, post the checksum,
    pack bucket i+1 ... so packing and checksumming overlap the transfer. `corrupt` (fault injection)
    flips a byte of bucket 0 after its checksum was taken."""
    works = []
    for i, (spec, tensors) in enumerate(zip(plan.buckets, groups)):
        buf = fill_bucket(spec, tensors)
        crc = checksum(buf)
        if corrupt and i == 0:
            buf[0] ^= 0xFF
        works.append((pg.broadcast(buf, 0), buf))
        works.append((pg.broadcast(torch.tensor([crc], dtype=torch.int64, device=buf.device), 0), None))
        if len(works) > 2 * IN_FLIGHT:  # bound the memory held by buckets in flight
            for w, _ in works[: 2]:
                w.wait()
            works = works[2:]
    for w, _ in works:
        w.wait()


def unpack_bucket(spec: BucketSpec, buf: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    out = []
    for ts in spec.tensors:
        raw = buf[ts.offset: ts.offset + ts.nbytes]
        out.append((ts.name, raw.view(_DTYPES[ts.dtype]).reshape(ts.shape)))
    return out


def receive_plan(pg, plan: SyncPlan, device: torch.device | str = "cpu", verify: bool = True,
                 in_flight: int = IN_FLIGHT):
    """Receiver side: yields (name, tensor) lists bucket by bucket as they arrive, with up to
    `in_flight` buckets posted ahead so verifying and loading one overlaps receiving the next.
    A bucket whose checksum differs is not yielded (never loaded); the remaining buckets are still
    received so the collective stays in step with the sender, then WeightSyncError names the bad
    buckets and the caller re-syncs the whole version."""
    bad = []
    pending: list = []
    nxt = 0

    def post():
        nonlocal nxt
        spec = plan.buckets[nxt]
        buf = torch.empty(spec.nbytes, dtype=torch.uint8, device=device)
        work = pg.broadcast(buf, 0)
        crc_t = crc_work = None
        if spec.checksum == STREAMED:
            crc_t = torch.zeros(1, dtype=torch.int64, device=device)
            crc_work = pg.broadcast(crc_t, 0)
        pending.append((nxt, spec, buf, work, crc_t, crc_work))
        nxt += 1

    while nxt < len(plan.buckets) and len(pending) < max(1, in_flight):
        post()
    while pending:
        i, spec, buf, work, crc_t, crc_work = pending.pop(0)
        work.wait()
        if crc_work is not None:
            crc_work.wait()
        if nxt < len(plan.buckets):
            post()
        if verify:
            want = int(crc_t.item()) if crc_t is not None else spec.checksum
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
