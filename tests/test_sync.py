import threading

import msgspec
import pytest
import torch

from tempsamp.models.names import checkpoint_name, memory_name
from tempsamp.sync.weights import (IN_FLIGHT, STREAMED, BufferRing, SyncPlan, WeightSyncError, checksum, fill_bucket, free_port, make_group,
                                   plan_buckets, receive_plan, send_streaming, unpack_bucket, BUCKET_MB,
                                   bucket_mb_for, parts_checksum)


def _named():
    torch.manual_seed(0)
    return [("a", torch.randn(300, 7)), ("b", torch.randn(5).to(torch.bfloat16)), ("c", torch.arange(11)),
            ("d", torch.randn(1000)), ("e", torch.randn(2, 3, 4).half())]


def _pack_with_checksums(named, bucket_bytes, version):
    """Every bucket packed now and its checksum kept in the plan: the non-streamed form `receive_plan`
    also accepts (no checksum follows a bucket on the wire). Returns (plan, buffers)."""
    plan, groups = plan_buckets(named, bucket_bytes, version)
    bufs = [fill_bucket(spec, g) for spec, g in zip(plan.buckets, groups)]
    buckets = tuple(msgspec.structs.replace(spec, checksum=checksum(b)) for spec, b in zip(plan.buckets, bufs))
    return SyncPlan(version=version, buckets=buckets), bufs


def _send_packed(pg, bufs):
    """Sender of `_pack_with_checksums`' buckets: every broadcast posted in order, then waited for."""
    for w in [pg.broadcast(buf, 0) for buf in bufs]:
        w.wait()


def test_pack_roundtrip_mixed_dtypes_and_bucket_limits():
    named = _named()
    plan, groups = plan_buckets(named, bucket_bytes=4096, version=3)
    bufs = [fill_bucket(spec, g) for spec, g in zip(plan.buckets, groups)]
    assert plan.version == 3 and len(plan.buckets) >= 2
    assert all(b.nbytes <= 8400 for b in plan.buckets)  # one oversized tensor may exceed the budget alone
    got = dict(kv for spec, buf in zip(plan.buckets, bufs) for kv in unpack_bucket(spec, buf))
    for k, t in named:
        assert got[k].dtype == t.dtype and torch.equal(got[k], t)
    raw = sum(t.numel() * t.element_size() for _, t in named)
    assert raw <= plan.nbytes < raw + 16 * len(named)  # only alignment padding added


def test_checksum_detects_corruption():
    buf = torch.arange(1000, dtype=torch.int32).view(torch.uint8)
    c = checksum(buf)
    bad = buf.clone()
    bad[17] ^= 1
    assert checksum(bad) != c and checksum(buf.clone()) == c


def test_plan_picks_the_wire_from_the_device_and_bucket_size_from_the_backend():
    plan, _ = plan_buckets(_named(), 4096, version=1)
    assert plan.wire == "per_tensor"  # CPU tensors: zero-copy per-tensor broadcasts
    assert msgspec.json.decode(msgspec.json.encode(plan), type=SyncPlan) == plan
    assert bucket_mb_for("gloo") == BUCKET_MB["gloo"] and bucket_mb_for("nccl", 64) == 64
    with pytest.raises(ValueError, match="backend"):
        bucket_mb_for("mpi")
    # the per_tensor checksum covers the bytes of every tensor, in order
    a, b = torch.arange(10, dtype=torch.int32), torch.ones(3)
    assert parts_checksum([a, b]) != parts_checksum([b, a])
    assert parts_checksum([a.view(torch.uint8)[:5], a.view(torch.uint8)[5:], b]) == parts_checksum([a, b])


def test_names_roundtrip():
    for n in ["model.language_model.layers.0.mlp.up_proj.weight", "model.visual.blocks.0.attn.qkv.weight", "lm_head.weight"]:
        assert memory_name(checkpoint_name(n)) == n
    assert checkpoint_name("model.language_model.embed_tokens.weight") == "model.embed_tokens.weight"
    assert checkpoint_name("model.visual.merger.mlp.0.bias") == "visual.merger.mlp.0.bias"


def _pair(world=3):
    port = free_port()
    groups = [None] * world

    def join(r):
        groups[r] = make_group("127.0.0.1", port, r, world, "gloo", 30)[0]

    ts = [threading.Thread(target=join, args=(r,)) for r in range(1, world)]
    for t in ts:
        t.start()
    join(0)
    for t in ts:
        t.join()
    return groups


def test_gloo_broadcast_to_two_receivers():
    groups = _pair(3)
    named = _named()
    plan, parts = plan_buckets(named, 2048, version=1)
    got = [{}, {}]

    def recv(i):
        for part in receive_plan(groups[i + 1], plan):
            got[i].update(dict(part))

    ts = [threading.Thread(target=recv, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    send_streaming(groups[0], plan, parts)
    for t in ts:
        t.join()
    for g in got:
        for k, t in named:
            assert torch.equal(g[k], t)


def test_checksum_mismatch_is_an_error():
    groups = _pair(2)
    plan, bufs = _pack_with_checksums(_named(), 1 << 20, version=2)
    bufs[0][5] ^= 7  # corrupted after the plan (and its checksum) was made
    err = []

    def recv():
        try:
            for _ in receive_plan(groups[1], plan):
                pass
        except WeightSyncError as e:
            err.append(str(e))

    t = threading.Thread(target=recv)
    t.start()
    _send_packed(groups[0], bufs)
    t.join()
    assert err and "checksum" in err[0] and "v2" in err[0]


@pytest.mark.parametrize("wire", ["per_tensor", "packed"])
@pytest.mark.parametrize("corrupt", [False, True])
def test_streamed_checksums_round_trip_and_catch_a_flipped_byte(corrupt, wire):
    """The learner's path: buckets sent while earlier ones travel (per_tensor: each tensor from its
    own storage; packed: one packed buffer), each checksum sent after its bucket; a corrupted bucket
    is not loaded, the rest still arrive, then the error names it. The receiver reuses a ring of
    buffers (as the engines do) and copies what it keeps."""
    groups = _pair(2)
    named = _named() + [(f"extra.{i}", torch.randn(300 + i)) for i in range(6)]
    before = {k: v.clone() for k, v in named}
    plan, parts = plan_buckets(named, 2048, version=4, wire=wire)
    assert plan.wire == wire
    # more buckets than the ring has slots: buffers are reused while later buckets are posted
    assert len(plan.buckets) > IN_FLIGHT + 1 and all(b.checksum == STREAMED for b in plan.buckets)
    ring = BufferRing(IN_FLIGHT + 1)
    got, err = {}, []

    def recv():
        try:
            for part in receive_plan(groups[1], plan, ring=ring):
                got.update({k: v.clone() for k, v in part})
        except WeightSyncError as e:
            err.append(str(e))

    t = threading.Thread(target=recv)
    t.start()
    send_streaming(groups[0], plan, parts, corrupt=corrupt)
    t.join()
    first = {ts.name for ts in plan.buckets[0].tensors}
    for k, v in named:  # fault injection never touches the learner's tensors
        assert torch.equal(v, before[k])
    if corrupt:
        assert err and "v4" in err[0] and "bucket 0" in err[0]
        assert not (first & set(got)) and set(got) == {k for k, _ in named} - first
    else:
        assert not err
        for k, v in named:
            assert torch.equal(got[k], v)


@pytest.mark.slow
def test_hf_engine_weights_equal_learner_after_sync(tiny_models):
    from tempsamp.models.loading import load_model
    from tempsamp.rollout.hf import HFEngine

    path = tiny_models("qwen2_5_vl")
    learner = load_model(path)
    eng = HFEngine(path)
    groups = [None, None]
    port = free_port()
    t = threading.Thread(target=lambda: eng.init_weight_group("127.0.0.1", port, 1, 2, "gloo", 30))
    t.start()
    groups[0] = make_group("127.0.0.1", port, 0, 2, "gloo", 30)[0]
    t.join()
    for version in (1, 2):
        with torch.no_grad():
            for n, p in learner.named_parameters():
                p.add_(0.01 * torch.randn_like(p))
        named = [(checkpoint_name(n), p.detach()) for n, p in learner.named_parameters() if "visual" not in n]
        plan, parts = plan_buckets(named, 1 << 20, version)
        th = threading.Thread(target=lambda: eng.receive_weights(plan))
        th.start()
        send_streaming(groups[0], plan, parts)
        th.join()
        assert eng.version == version
        ours = dict(learner.named_parameters())
        theirs = dict(eng.model.named_parameters())
        for n, p in ours.items():
            if "visual" in n:
                assert not torch.equal(p, theirs[n])  # frozen tower is not sent
            else:
                assert torch.equal(p, theirs[n]), n
