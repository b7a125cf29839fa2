"""Atomic, checksummed torch.distributed.checkpoint (DCP) checkpoints that a restarted job resumes from.

Layout of one checkpoint::

    <dir>/step_00000120/.metadata         DCP's metadata: every tensor's global shape and where its pieces are
    <dir>/step_00000120/__0_0.distcp      DCP's data, one file per writing rank (each shard written once)
    <dir>/step_00000120/__1_0.distcp
    <dir>/step_00000120/manifest.json     {"format": "dcp", "step", "run_id", "world_size", **meta,
                                           "files": {name: {"sha256", "bytes"}}}

``meta`` is what the caller says the checkpoint is (launch: ``layout`` {tp, dp}, ``model`` and ``recipe``
configs). What the state holds and how it is placed is the caller's (fp4dist.dcp_state); this module
only writes, checks, finds and deletes checkpoints.

**Save** (:class:`Checkpointer`): DCP writes into ``step_N.partial/`` (``dcp.save``, or with
``async_save`` ``dcp.async_save``, which copies the state to host memory and writes it in a background
thread while training goes on); each rank fsyncs and hashes the files it wrote (sha256 of the bytes on
disk), rank 0 gathers the hashes, writes the manifest (temporary file, fsync, rename) and renames the
directory to ``step_N`` in one atomic rename. An asynchronous save is completed this way as soon as a
:meth:`Checkpointer.poll` (launch: after every step) finds it written on every rank, and at the latest
before the next save starts and at :meth:`Checkpointer.close`. A crash at any point leaves either the complete new
checkpoint or an ignored ``.partial`` directory beside the last good one. Checkpoint collectives run on
a process group of their own (gloo), so that a background save never interleaves with training's.

**Load** (:func:`load_latest`) walks the complete checkpoints from the newest. The manifest must name
this run and step; its ``meta`` must equal the caller's ``expect`` (launch: the model and recipe), or
:class:`CheckpointError` refuses at once, saying what differs. The ranks check the files' sizes and
sha256 between them (file i on rank i mod world) and exchange their verdicts, so they all take the same
step: the newest one that is good everywhere and that ``dcp.load`` reads into the caller's state (which
may be of another layout: DCP reshards). A damaged checkpoint is skipped with a warning on every rank
naming the file. Where checkpoints exist but none is usable, :class:`CheckpointError` says why and
nothing on disk is changed. Retention (``keep_last``) deletes only checkpoints whose manifest carries
this run's id; a complete checkpoint another run wrote is never replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

from fp4dist.metrics import atomic_write_text, fsync_dir

log = logging.getLogger("fp4dist")
_STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
DCP_METADATA = ".metadata"
FORMAT = "dcp"


class CheckpointError(RuntimeError):
    """Checkpoints exist but none can be resumed from (the message says why and what to do)."""


def _dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank_world(group=None) -> tuple[int, int]:
    return (dist.get_rank(group), dist.get_world_size(group)) if _dist() else (0, 1)


def _barrier(group=None) -> None:
    if _dist():
        dist.barrier(group=group)


def _all_gather(obj, group=None) -> list:
    """Every rank's ``obj``, in rank order (just ``[obj]`` without a process group)."""
    if not _dist():
        return [obj]
    out = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


@contextlib.contextmanager
def single_process_quiet():
    """Silence DCP's warning that a process without a process group saves or loads alone: it is meant to."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def checkpoint_group():
    """A gloo process group of all ranks for checkpoint collectives (None without a process group).
    Collective: every rank calls it, at the same point."""
    return dist.new_group(backend="gloo") if _dist() else None


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


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


def differences(saved, current, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values: ``"key: A there, B now"``."""
    if isinstance(saved, dict) and isinstance(current, dict):
        return [d for k in sorted(set(saved) | set(current))
                for d in differences(saved.get(k), current.get(k), f"{prefix}{k}.")]
    return [] if saved == current else [f"{prefix.rstrip('.')}: {saved!r} there, {current!r} now"]


def _json(value):
    return json.loads(json.dumps(value))


def _prune(root: Path, keep_last: int, run_id: str) -> None:
    """Delete this run's checkpoints (manifest ``run_id``) beyond the newest ``keep_last``."""
    own = [s for s in complete_steps(root) if (read_manifest(step_dir(root, s)) or {}).get("run_id") == run_id]
    for old in own[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(step_dir(root, old), ignore_errors=True)


def _own_files(partial: Path, rank: int) -> dict:
    """{name: {"sha256", "bytes"}} of the DCP files this rank wrote (rank 0: and DCP's metadata)."""
    own = sorted(p for p in partial.iterdir() if p.name.startswith(f"__{rank}_"))
    if rank == 0:
        own.append(partial / DCP_METADATA)
    return {p.name: _file_entry(p) for p in own}


@dataclass
class _Pending:
    """A save whose DCP write has started (``future``: an async write) and that is not yet renamed."""

    step: int
    partial: Path
    final: Path
    future: Future | None
    crash_hook: Callable[[], None] | None
    started: float = field(default_factory=time.perf_counter)


class Checkpointer:
    """Saves of one run into ``root``; ``meta`` goes into every manifest.

    ``group``: the process group of the checkpoint collectives (:func:`checkpoint_group`; None: the
    default group, or a single process). ``async_save``: :meth:`save` returns once the state is copied
    to host memory; the write and the hashing of the files finish in the background, and the save is
    completed (manifest, rename) by the first :meth:`poll` that finds it written on every rank, or
    at the next :meth:`save`, or at :meth:`close`.
    """

    def __init__(self, root: str | Path, run_id: str, keep_last: int = 2, async_save: bool = False,
                 group=None, meta: dict | None = None):
        self.root, self.run_id, self.keep_last = Path(root), run_id, keep_last
        self.async_save, self.group, self.meta = async_save, group, _json(meta or {})
        self._pending: _Pending | None = None
        self._hasher: ThreadPoolExecutor | None = None  # hashes an asynchronous save's files once written

    def save(self, step: int, state: dict, crash_hook: Callable[[], None] | None = None) -> float:
        """Collective: save ``state`` (a DCP state dict) as ``step``. Returns the seconds the caller was
        held (the whole save; with ``async_save`` waiting for the previous one and copying the state).

        ``crash_hook`` runs on every rank once its files are written, before the manifest (tests kill
        a rank there). RuntimeError where a complete checkpoint of this step belongs to another run.
        """
        t0 = time.perf_counter()
        self.wait()
        rank, _ = _rank_world(self.group)
        final, partial = step_dir(self.root, step), self.root / f"step_{step:08d}.partial"
        if final.exists() and (read_manifest(final) or {}).get("run_id") != self.run_id:
            raise RuntimeError(f"{final} exists and was not written by this run (run id {self.run_id!r}): refusing "
                               f"to replace it; use another checkpoint.dir")
        if rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
        _barrier(self.group)
        writer = FileSystemWriter(partial, sync_files=True, thread_count=1)
        kwargs = dict(storage_writer=writer, process_group=self.group, no_dist=not _dist())
        if self.async_save:
            with single_process_quiet():
                response = dcp.async_save(state, **kwargs)
            written = getattr(response, "upload_completion", response)  # a Future (or its newer response)
            if self._hasher is None:
                self._hasher = ThreadPoolExecutor(1, thread_name_prefix="fp4dist-checkpoint-hash")
            hashed = self._hasher.submit(lambda: (written.result(), _own_files(partial, rank))[1])
            self._pending = _Pending(step, partial, final, hashed, crash_hook)
        else:
            with single_process_quiet():
                dcp.save(state, **kwargs)
            self._pending = _Pending(step, partial, final, None, crash_hook)
            self.wait()
        return time.perf_counter() - t0

    def poll(self) -> bool:
        """Collective: complete the save in flight if its files are written and hashed on every rank (one
        small all-gather while a save is in flight; nothing otherwise). True when one was completed."""
        if self._pending is None or self._pending.future is None:
            return False
        if not all(_all_gather(self._pending.future.done(), self.group)):
            return False
        self.wait()
        return True

    def wait(self) -> float:
        """Collective: finish the save in flight, if any (wait for its write and hashes; manifest, rename,
        retention); returns the seconds waited."""
        pending, self._pending = self._pending, None
        if pending is None:
            return 0.0
        t0 = time.perf_counter()
        rank, _ = _rank_world(self.group)
        own = pending.future.result() if pending.future is not None else _own_files(pending.partial, rank)
        if pending.crash_hook is not None:
            pending.crash_hook()
        self._finish(pending, own)
        if pending.future is not None:
            log.info("checkpoint step %d complete (written in the background in %.2f s)", pending.step,
                     time.perf_counter() - pending.started)
        return time.perf_counter() - t0

    def close(self) -> float:
        """Collective: :meth:`wait`, at the end of the run; returns the seconds waited."""
        waited = self.wait()
        if self._hasher is not None:
            self._hasher.shutdown()
            self._hasher = None
        return waited

    def _finish(self, pending: _Pending, own: dict) -> None:
        rank, world = _rank_world(self.group)
        partial = pending.partial
        entries = _all_gather(own, self.group)  # also the barrier: every rank's files are written
        if rank == 0:
            files = {name: e for per_rank in entries for name, e in per_rank.items()}
            for p in sorted(partial.iterdir()):  # anything no rank claimed (there should be nothing)
                if p.is_file() and p.name not in files:
                    files[p.name] = _file_entry(p)
            manifest = {"format": FORMAT, "step": pending.step, "run_id": self.run_id, "world_size": world,
                        **self.meta, "files": files}
            fsync_dir(partial)
            atomic_write_text(partial / MANIFEST, json.dumps(manifest, indent=1) + "\n")
            if pending.final.exists():
                shutil.rmtree(pending.final)  # this run's own, from an attempt that died after saving it
            partial.rename(pending.final)
            fsync_dir(self.root)
            _prune(self.root, self.keep_last, self.run_id)
        _barrier(self.group)


def save(directory: str | Path, step: int, state: dict, keep_last: int = 2, run_id: str = "",
         meta: dict | None = None, crash_hook=None, group=None) -> Path:
    """Collective: a synchronous :meth:`Checkpointer.save`; returns the checkpoint's directory."""
    Checkpointer(directory, run_id, keep_last, group=group, meta=meta).save(step, state, crash_hook)
    return step_dir(directory, step)


@dataclass
class Loaded:
    step: int
    manifest: dict


def _manifest_problems(directory: Path, step: int, run_id: str | None, expect: dict | None
                       ) -> tuple[dict | None, str | None, list[str]]:
    """(manifest, why it is unusable, how its meta differs from ``expect``)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return None, f"{directory / MANIFEST} is missing or unreadable", []
    if run_id is not None and manifest.get("run_id") != run_id:
        return None, f"{directory} belongs to run {manifest.get('run_id')!r}, not this run {run_id!r}", []
    if manifest.get("step") != step:
        return None, f"{directory / MANIFEST} is for step {manifest.get('step')}", []
    files = manifest.get("files")
    if manifest.get("format") != FORMAT or not isinstance(files, dict) or DCP_METADATA not in files:
        return None, f"{directory} is not a torch.distributed.checkpoint checkpoint (its manifest lists no " \
                     f"{DCP_METADATA})", []
    diffs = [d for key, value in _json(expect or {}).items() for d in differences(manifest.get(key), value, key + ".")]
    return manifest, None, diffs


def _file_problem(directory: Path, name: str, expected: dict) -> str | None:
    path = directory / name
    try:
        size, digest = path.stat().st_size, sha256_file(path)
    except OSError as e:
        return f"{path} cannot be read ({e.strerror or e})"
    if size != expected.get("bytes") or digest != expected.get("sha256"):
        return (f"{path} is corrupt: {size} bytes with sha256 {digest[:16]}..., the manifest says "
                f"{expected.get('bytes')} bytes with sha256 {str(expected.get('sha256'))[:16]}...")
    return None


def _files_problems(directory: Path, manifest: dict, rank: int, world: int) -> list[str]:
    """The problems of this rank's share of the manifest's files (file i is checked by rank i mod world)."""
    names = sorted(manifest["files"])
    problems = [_file_problem(directory, n, manifest["files"][n]) for n in names[rank::world]]
    return [p for p in problems if p]


def _mismatch_error(directory: Path, diffs: list[str]) -> CheckpointError:
    return CheckpointError(
        f"{directory} was written for another model or recipe ({'; '.join(diffs)}): this run cannot resume from "
        f"it. Nothing was changed. Resume with the model and recipe it was written for, or start a new run in "
        f"another output_dir / checkpoint.dir (or overwrite=true, which deletes the earlier run's files); a "
        f"checkpoint's model can start another run with checkpoint.init_from=<python -m fp4dist.export output>.")


def _no_usable_checkpoint(root: Path, skipped: list) -> CheckpointError:
    detail = "; ".join(f"step {s}: {p[0]}" + (f" (and {len(p) - 1} more)" if len(p) > 1 else "") for s, p in skipped)
    return CheckpointError(
        f"no checkpoint in {root} is usable ({detail}). Nothing was changed. Restore them, start a new run in "
        f"another output_dir, or pass overwrite=true to delete them and start afresh.")


def find_resumable(directory: str | Path, run_id: str | None = None, expect: dict | None = None) -> int | None:
    """The step :func:`load_latest` would take, from the manifests and checksums alone (one process
    checks every file; nothing is loaded): a check before the job starts. A checkpoint of any layout
    qualifies (DCP reshards). None where there is no complete checkpoint; CheckpointError as load_latest."""
    root, skipped = Path(directory), []
    for step in reversed(complete_steps(root)):
        manifest, problem, diffs = _manifest_problems(step_dir(root, step), step, run_id, expect)
        if diffs:
            raise _mismatch_error(step_dir(root, step), diffs)
        problems = [problem] if problem else _files_problems(step_dir(root, step), manifest, 0, 1)
        if not problems:
            return step
        skipped.append((step, problems))
    if skipped:
        raise _no_usable_checkpoint(root, skipped)
    return None


def verify(directory: str | Path) -> dict:
    """One complete checkpoint checked alone (manifest and every file's checksum): its manifest, or
    CheckpointError saying what is wrong."""
    directory = Path(directory)
    m = _STEP_DIR.match(directory.name)
    if m is None or not directory.is_dir():
        raise CheckpointError(f"{directory} is not a complete checkpoint directory (step_NNNNNNNN)")
    manifest, problem, _ = _manifest_problems(directory, int(m.group(1)), None, None)
    problems = [problem] if problem else _files_problems(directory, manifest, 0, 1)
    if problems:
        raise CheckpointError(f"{directory} is unusable: {'; '.join(problems)}")
    return manifest


def load_latest(directory: str | Path, state: dict, run_id: str | None = None, expect: dict | None = None,
                group=None) -> Loaded | None:
    """Collective: fill ``state`` (a DCP state dict of the current layout, loaded in place) from the newest
    checkpoint good on every rank; returns its step and manifest, or None where ``directory`` holds no
    complete checkpoint (``state`` untouched).

    ``run_id``: only checkpoints whose manifest names this run are used (None: any run). ``expect``:
    manifest entries that must be equal (else CheckpointError at once: another model or recipe).
    Raises :class:`CheckpointError` on every rank when checkpoints exist but none is usable. A
    checkpoint that fails to load after its checksums passed may have been partly read into ``state``;
    the next one read overwrites every entry.
    """
    rank, world = _rank_world(group)
    root = Path(directory)
    if rank == 0 and root.is_dir():
        for p in sorted(root.glob("step_*.partial")):
            log.warning("ignoring incomplete checkpoint %s (a save was interrupted)", p)
    skipped = []
    for step in reversed(complete_steps(root)):
        d = step_dir(root, step)
        manifest, problem, diffs = _manifest_problems(d, step, run_id, expect)
        problems = [problem] if problem else ([] if diffs else _files_problems(d, manifest, rank, world))
        verdicts = _all_gather((problems, diffs), group)
        if any(v[1] for v in verdicts):
            raise _mismatch_error(d, next(v[1] for v in verdicts if v[1]))
        problems = [p for v in verdicts for p in v[0]]
        if not problems:
            try:
                with single_process_quiet():
                    dcp.load(state, storage_reader=FileSystemReader(d), process_group=group, no_dist=not _dist())
                failure = None
            except Exception as e:  # noqa: BLE001 - any failure to read makes the checkpoint unusable
                failure = f"{d} matches its checksums but does not load ({type(e).__name__}: {str(e)[:300]})"
            problems = [p for p in _all_gather(failure, group) if p]
        if not problems:
            if skipped:
                log.warning("resuming from %s, the newest usable checkpoint", d)
            return Loaded(step, manifest)
        for p in dict.fromkeys(problems):  # each once, in rank order
            log.warning("checkpoint step %d is unusable, trying an older one: %s", step, p)
        skipped.append((step, problems))
    if skipped:
        raise _no_usable_checkpoint(root, skipped)
    return None
