"""Atomic, checksummed per-rank checkpoints that a restarted job resumes from.

Layout of one checkpoint::

    <dir>/step_00000120/rank00000.pt      one torch.save file per rank: {"step", "world_size", "state"}
    <dir>/step_00000120/rank00001.pt
    <dir>/step_00000120/manifest.json     {"step", "world_size", "run_id", "files": {name: {"sha256", "bytes"}}}

A save writes into ``step_N.partial/``: every rank writes and fsyncs its file and hashes it (sha256
of the bytes on disk); rank 0 gathers the hashes, writes the manifest (temporary file, fsync,
rename), and renames the directory to ``step_N`` in one atomic rename. A crash at any point leaves
either the complete new checkpoint or an ignored ``.partial`` directory beside the last good one.

Loading (:func:`load_latest`) walks the complete checkpoints from the newest. Each rank checks its
own file against the manifest (size, sha256), and that the manifest names this run and this world
size; the ranks exchange their verdicts, so they all take the same step: the newest one that is
good on every rank. A damaged checkpoint is skipped with a warning on every rank naming the file.
Where checkpoints exist but none is usable, :class:`CheckpointError` says why and nothing on disk
is changed. Retention (``keep_last``) deletes only checkpoints whose manifest carries this run's id.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from fp4dist.metrics import atomic_write_text, fsync_dir

log = logging.getLogger("fp4dist")
_STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """Checkpoints exist but none can be resumed from (the message says why and what to do)."""


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _dist():
        dist.barrier()


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if _dist() else (0, 1)


def _all_gather(obj) -> list:
    """Every rank's ``obj``, in rank order (just ``[obj]`` without a process group)."""
    if not _dist():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_file(rank: int) -> str:
    return f"rank{rank:05d}.pt"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def complete_steps(root: str | Path) -> list[int]:
    """Steps of the complete (renamed) checkpoint directories in ``root``, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name)))


def read_manifest(directory: Path) -> dict | None:
    """A checkpoint directory's manifest, or None where it is missing or unreadable."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _write_rank_file(partial: Path, rank: int, step: int, world: int, state: dict) -> dict:
    tmp = partial / (rank_file(rank) + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"step": step, "world_size": world, "state": state}, f)
        f.flush()
        os.fsync(f.fileno())
    final = partial / rank_file(rank)
    tmp.replace(final)
    return {"sha256": sha256_file(final), "bytes": final.stat().st_size}


def _prune(root: Path, keep_last: int, run_id: str) -> None:
    """Delete this run's checkpoints (manifest ``run_id``) beyond the newest ``keep_last``."""
    own = [s for s in complete_steps(root) if (read_manifest(step_dir(root, s)) or {}).get("run_id") == run_id]
    for old in own[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(step_dir(root, old), ignore_errors=True)


def save(directory: str | Path, step: int, state: dict, keep_last: int = 2, run_id: str = "",
         crash_hook=None) -> Path:
    """Collective: every rank saves ``state`` for ``step``; returns the final directory.

    ``run_id`` goes into the manifest; retention deletes only checkpoints with the same id, and a
    complete checkpoint of the same step that another run wrote is never replaced (RuntimeError).
    """
    rank, world = _rank_world()
    root = Path(directory)
    final, partial = step_dir(root, step), root / f"step_{step:08d}.partial"
    if final.exists() and (read_manifest(final) or {}).get("run_id") != run_id:
        raise RuntimeError(f"{final} exists and was not written by this run (run id {run_id!r}): refusing to "
                           f"replace it; use another checkpoint.dir")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
    _barrier()
    entry = _write_rank_file(partial, rank, step, world, state)
    if crash_hook is not None:
        crash_hook()  # tests kill a rank here, mid-checkpoint
    entries = _all_gather(entry)  # also the barrier: every rank's file is on disk
    if rank == 0:
        files = {rank_file(r): e for r, e in enumerate(entries)}
        manifest = {"step": step, "world_size": world, "run_id": run_id, "files": files}
        atomic_write_text(partial / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)  # this run's own, from an attempt that died after saving it
        partial.rename(final)
        fsync_dir(root)
        _prune(root, keep_last, run_id)
    _barrier()
    return final


@dataclass
class _Verdict:
    """One rank's check of one checkpoint: ``problem`` is None when its file is good."""

    problem: str | None = None
    world_size: int | None = None  # set when the checkpoint was written by another world size


def _check_file(directory: Path, step: int, rank: int, world: int, run_id: str | None,
                keep: bool) -> tuple[_Verdict, bytes | None]:
    """The manifest's checks of one rank's file; with ``keep`` its bytes (read once, for loading)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return _Verdict(f"{directory / MANIFEST} is missing or unreadable"), None
    if run_id is not None and manifest.get("run_id") != run_id:
        return _Verdict(f"{directory} belongs to run {manifest.get('run_id')!r}, not this run {run_id!r}"), None
    if manifest.get("step") != step:
        return _Verdict(f"{directory / MANIFEST} is for step {manifest.get('step')}"), None
    if manifest.get("world_size") != world:
        return _Verdict(f"{directory} was written by {manifest.get('world_size')} ranks, this job has {world}",
                        manifest.get("world_size")), None
    path = directory / rank_file(rank)
    expected = manifest.get("files", {}).get(rank_file(rank), {})
    try:
        data = path.read_bytes() if keep else None
        size, digest = (len(data), hashlib.sha256(data).hexdigest()) if keep else (path.stat().st_size, sha256_file(path))
    except OSError as e:
        return _Verdict(f"{path} cannot be read ({e.strerror or e})"), None
    if size != expected.get("bytes") or digest != expected.get("sha256"):
        return _Verdict(f"{path} is corrupt: {size} bytes with sha256 {digest[:16]}..., the manifest says "
                        f"{expected.get('bytes')} bytes with sha256 {str(expected.get('sha256'))[:16]}..."), None
    return _Verdict(), data


def _load(directory: Path, step: int, rank: int, world: int, run_id: str | None,
          map_location) -> tuple[_Verdict, dict | None]:
    verdict, data = _check_file(directory, step, rank, world, run_id, keep=True)
    if verdict.problem:
        return verdict, None
    try:
        blob = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle makes the file unusable
        return _Verdict(f"{directory / rank_file(rank)} matches its checksum but does not load "
                        f"({type(e).__name__}: {e})"), None
    if blob.get("step") != step or blob.get("world_size") != world:
        return _Verdict(f"{directory / rank_file(rank)} holds step {blob.get('step')} of {blob.get('world_size')} "
                        f"ranks, expected step {step} of {world}"), None
    return _Verdict(), blob["state"]


def _no_usable_checkpoint(root: Path, skipped: list, world: int) -> CheckpointError:
    """The refusal when every checkpoint was skipped: (step, problems, world sizes found) each."""
    worlds = set().union(*(w for _, _, w in skipped))
    detail = "; ".join(f"step {s}: {p[0]}" + (f" (and {len(p) - 1} more)" if len(p) > 1 else "")
                       for s, p, _ in skipped)
    if all(w for _, _, w in skipped):
        return CheckpointError(
            f"every checkpoint in {root} was written by {'/'.join(map(str, sorted(worlds)))} ranks and this job has "
            f"{world}: resume it with that many processes (NPROC={min(worlds)}), or start a new run in another "
            f"output_dir (or overwrite=true, which deletes them). Nothing was changed. ({detail})")
    return CheckpointError(
        f"no checkpoint in {root} is usable ({detail}). Nothing was changed. Restore them, start a new run in "
        f"another output_dir, or pass overwrite=true to delete them and start afresh.")


def _problems(verdicts: list[_Verdict]) -> tuple[list[str], set[int]]:
    return [v.problem for v in verdicts if v.problem], {v.world_size for v in verdicts if v.world_size is not None}


def find_resumable(directory: str | Path, world: int, run_id: str | None = None) -> int | None:
    """The step :func:`load_latest` would take in a job of ``world`` ranks, from the manifests and
    checksums of every rank's file (nothing is unpickled; one process checks all): a check before
    the job starts. None where there is no complete checkpoint; CheckpointError as load_latest."""
    root, skipped = Path(directory), []
    for step in reversed(complete_steps(root)):
        verdicts = [_check_file(step_dir(root, step), step, r, world, run_id, keep=False)[0] for r in range(world)]
        problems, worlds = _problems(verdicts)
        if not problems:
            return step
        skipped.append((step, problems, worlds))
    if skipped:
        raise _no_usable_checkpoint(root, skipped, world)
    return None


def load_latest(directory: str | Path, map_location=None, run_id: str | None = None) -> tuple[dict, int] | None:
    """Collective: (this rank's state, step) from the newest checkpoint good on every rank, or None
    where ``directory`` holds no complete checkpoint.

    ``run_id``: only checkpoints whose manifest names this run are used (None: any run).
    Raises :class:`CheckpointError` on every rank when checkpoints exist but none is usable.
    """
    rank, world = _rank_world()
    root = Path(directory)
    if rank == 0 and root.is_dir():
        for p in sorted(root.glob("step_*.partial")):
            log.warning("ignoring incomplete checkpoint %s (a save was interrupted)", p)
    skipped = []
    for step in reversed(complete_steps(root)):
        verdict, state = _load(step_dir(root, step), step, rank, world, run_id, map_location)
        problems, worlds = _problems(_all_gather(verdict))
        if not problems:
            if skipped:
                log.warning("resuming from %s, the newest usable checkpoint", step_dir(root, step))
            return state, step
        for problem in dict.fromkeys(problems):  # each once, in rank order
            log.warning("checkpoint step %d is unusable, trying an older one: %s", step, problem)
        skipped.append((step, problems, worlds))
    if skipped:
        raise _no_usable_checkpoint(root, skipped, world)
    return None
