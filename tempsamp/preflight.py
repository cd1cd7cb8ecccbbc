"""Preflight: what a run needs from its surroundings, checked before Ray or any actor starts —
output and log folders writable, free disk for the checkpoints it will keep, model and data paths
readable, the Ray cluster in RAY_ADDRESS reachable. Each check is a pure function returning failure
lines (one per problem, naming the path or address); `check_train` / `check_eval` / `check_cache`
gather every check of a command and raise one PreflightError listing all failures together.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GB = 1e9


class PreflightError(RuntimeError):
    """Every failed preflight check, one line each."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("preflight failed (nothing was started):\n" + "\n".join(f"  - {f}" for f in failures))


# ---- single checks: each returns failure lines --------------------------------------------------
def check_writable_dir(path: str | os.PathLike, key: str) -> list[str]:
    """The folder exists (created if missing) and a file can be created in it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".preflight-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return [f"{key} {p}: not writable ({e.strerror or e})"]
    return []


def check_readable_file(path: str | os.PathLike, key: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        return [f"{key} {p}: not found"]
    if not p.is_file():
        return [f"{key} {p}: not a file"]
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        return [f"{key} {p}: not readable ({e.strerror or e})"]
    return []


def check_readable_dir(path: str | os.PathLike, key: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        return [f"{key} {p}: not found"]
    if not p.is_dir():
        return [f"{key} {p}: not a folder"]
    if not os.access(p, os.R_OK | os.X_OK):
        return [f"{key} {p}: not readable (permissions)"]
    return []


def check_model_dir(path: str | os.PathLike, key: str = "model.path") -> list[str]:
    """A local Hugging Face model folder: config.json and readable weight files."""
    bad = check_readable_dir(path, key)
    if bad:
        return bad
    p = Path(path)
    out = check_readable_file(p / "config.json", f"{key} (config.json)")
    weights = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    if not weights:
        out.append(f"{key} {p}: no weights (*.safetensors or *.bin)")
    for w in weights:
        out += check_readable_file(w, f"{key} (weights)")
    return out


def model_parameters(path: str | os.PathLike, frozen_prefix: str | None = "visual") -> tuple[int, int]:
    """(all, trainable) parameter counts of a local safetensors model, read from the file headers (no
    weights loaded). Tensors whose name has a component starting with `frozen_prefix` (the vision tower,
    frozen by learner.freeze_vision_tower) are not trainable."""
    from safetensors import safe_open

    total = trainable = 0
    for w in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(w), framework="np") as f:
            for name in f.keys():
                n = 1
                for d in f.get_slice(name).get_shape():
                    n *= d
                total += n
                if not (frozen_prefix and any(part.startswith(frozen_prefix) for part in name.split("."))):
                    trainable += n
    return total, trainable


def checkpoint_bytes(params: int, trainable: int, dtype: str, export_hf: bool) -> int:
    """One checkpoint as learner/checkpoint.py writes it: every parameter and AdamW's two moments of
    every trainable one (the rank shards, in the learner's dtype), plus the HF export's full weights."""
    b = DTYPE_BYTES[dtype]
    return params * b + 2 * trainable * b + (params * b if export_hf else 0)


def _existing_dir(path: Path) -> Path:
    """`path` or its nearest existing parent (where its bytes would go)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_checkpoint_space(output_dir: str | os.PathLike, per_checkpoint: int, keep: int, what: str,
                           free_bytes: int | None = None) -> list[str]:
    """`keep` checkpoints of `per_checkpoint` bytes must fit in the free space plus the complete
    checkpoints already there (they are rotated out as new ones arrive)."""
    from .learner.checkpoint import complete_checkpoints

    out = Path(output_dir)
    free = shutil.disk_usage(_existing_dir(out)).free if free_bytes is None else free_bytes
    have = sum(_tree_bytes(c) for c in complete_checkpoints(out)) if out.is_dir() else 0
    need = keep * per_checkpoint
    if free + have >= need:
        return []
    return [f"checkpoint.output_dir {out}: {free / GB:.1f} GB free"
            + (f" (+ {have / GB:.1f} GB of checkpoints there)" if have else "")
            + f", {keep} checkpoints (checkpoint.save_limit + the one being written) of ~{per_checkpoint / GB:.1f} GB "
            f"each need {need / GB:.1f} GB ({what}); free space, lower checkpoint.save_limit or set "
            "checkpoint.export_hf=false"]


def parse_ray_address(address: str) -> tuple[str, int] | None:
    """(host, port) to probe for a RAY_ADDRESS, or None when there is nothing to probe (`auto`, `local`)."""
    a = address.strip()
    if a in ("", "auto", "local"):
        return None
    if "://" not in a:
        a = "gcs://" + a
    u = urlparse(a)
    default = {"ray": 10001, "http": 8265, "https": 443}.get(u.scheme, 6379)
    if not u.hostname:
        raise ValueError(f"no host in {address!r}")
    return u.hostname, u.port or default


def check_ray_address(address: str, timeout_s: float = 5.0, key: str = "RAY_ADDRESS") -> list[str]:
    """A TCP connection to the cluster's address opens within `timeout_s`."""
    try:
        target = parse_ray_address(address)
    except ValueError as e:
        return [f"{key} {address}: not an address ({e})"]
    if target is None:
        return []
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return []
    except OSError as e:
        return [f"{key} {address}: not reachable ({e.strerror or e or 'timed out'}; is the Ray head running?)"]


# ---- per command --------------------------------------------------------------------------------
def _finish(failures: list[str]) -> None:
    if failures:
        raise PreflightError(failures)


def train_failures(cfg, env: dict | None = None, free_bytes: int | None = None) -> list[str]:
    """Every preflight failure of `tempsamp train` with `cfg` (empty: all good)."""
    env = os.environ if env is None else env
    c, d = cfg.checkpoint, cfg.data
    out = check_writable_dir(cfg.trainer.log_dir, "trainer.log_dir")
    if c.save_freq:
        out += check_writable_dir(c.output_dir, "checkpoint.output_dir")
    if c.resume not in ("never", "auto"):  # a checkpoint folder to resume from
        out += check_readable_dir(c.resume, "checkpoint.resume")
    if cfg.trainer.spill_dir:
        out += check_writable_dir(cfg.trainer.spill_dir, "trainer.spill_dir")
    model_ok = False
    if cfg.model.path:
        bad = check_model_dir(cfg.model.path)
        out += bad
        model_ok = not bad
    for f in d.train_files:
        out += check_readable_file(f, "data.train_files")
    if not d.train_files and d.synthetic_dir:
        out += check_writable_dir(d.synthetic_dir, "data.synthetic_dir")
    if d.video_root:
        out += check_readable_dir(d.video_root, "data.video_root")
    if d.use_preprocessed and d.video_source_mode != "realtime_only":
        if d.video_source_mode == "preprocessed_only" or Path(d.preprocessed_video_dir).exists():
            out += check_readable_dir(d.preprocessed_video_dir, "data.preprocessed_video_dir")
        if d.rebuild_cache:
            out += check_writable_dir(d.preprocessed_video_dir, "data.preprocessed_video_dir")
    # the synthetic set (its bench folder included) is generated before training, so it need not exist yet
    synth_bench = not d.train_files and d.synthetic_dir and \
        Path(cfg.eval.bench_dir).absolute() == (Path(d.synthetic_dir) / "bench").absolute()
    if cfg.eval.val_freq and not synth_bench:
        out += check_readable_dir(cfg.eval.bench_dir, "eval.bench_dir")
    if c.save_freq and model_ok:
        try:
            params, trainable = model_parameters(cfg.model.path,
                                                 "visual" if cfg.learner.freeze_vision_tower else None)
        except Exception as e:  # a weights file whose header cannot be read
            out.append(f"model.path {cfg.model.path}: cannot read the weights' headers ({e})")
        else:
            per = checkpoint_bytes(params, trainable, cfg.model.dtype, c.export_hf)
            what = (f"{params / 1e9:.2f} B parameters in {cfg.model.dtype}, AdamW state of "
                    f"{trainable / 1e9:.2f} B trainable" + (", HF export" if c.export_hf else ""))
            out += check_checkpoint_space(c.output_dir, per, c.save_limit + 1, what, free_bytes)
    if env.get("RAY_ADDRESS"):
        out += check_ray_address(env["RAY_ADDRESS"])
    return out


def check_train(cfg, env: dict | None = None) -> None:
    _finish(train_failures(cfg, env))


def check_eval(cfg, model: str, output: str, env: dict | None = None) -> None:
    """`tempsamp eval`: the model folder, the bench folder, the output folder, the Ray address."""
    env = os.environ if env is None else env
    out = check_model_dir(model, "--model")
    out += check_readable_dir(cfg.eval.bench_dir, "eval.bench_dir")
    out += check_writable_dir(output, "--output")
    if env.get("RAY_ADDRESS"):
        out += check_ray_address(env["RAY_ADDRESS"])
    _finish(out)


def check_cache(input_jsonl: str, cache_dir: str, output_jsonl: str) -> None:
    """`tempsamp cache`: the input JSONL readable, the cache folder and the output's folder writable."""
    out = check_readable_file(input_jsonl, "--input")
    out += check_writable_dir(cache_dir, "--output-dir")
    out += check_writable_dir(Path(output_jsonl).absolute().parent, "--output (folder)")
    _finish(out)
