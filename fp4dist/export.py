"""A checkpoint's model as one consolidated high-precision file, and a model initialised from such a file.

    python -m fp4dist.export <checkpoint>/step_00000300 model.safetensors   # or model.pt

The file holds the full tensors under the names of the TP=1 GPT's ``state_dict()`` (``tok_emb``,
``blocks.0.attn.qkv.weight`` [3d, d], ...), in the dtype training keeps them (fp32 master weights),
whatever (tp, dp) layout wrote the checkpoint: the full tensors are what DCP records, so no process
group and no model code is needed to read them. ``.safetensors`` (the optional ``safetensors``
package: ``pip install fp4dist[export]``) loads with ``safetensors.torch.load_file`` and carries the
model and recipe configs in its metadata (``fp4dist.model``, ``fp4dist.recipe``, JSON) and the step;
``.pt`` is a plain ``{name: tensor}`` dict for ``torch.load(path, weights_only=True)``. The
checkpoint's checksums are verified first; the file is written to a temporary name and renamed.

:func:`init_model` is the inverse: every rank reads the file and keeps its own shard of each tensor
(launch: ``checkpoint.init_from=<file>``, at any TP size).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from fp4dist import checkpoint, dcp_state

MODEL_KEY = "model"  #: the checkpoint entry holding the model (fp4dist.dcp_state)
SUFFIXES = (".safetensors", ".pt")


class ModelFileError(checkpoint.CheckpointError):
    """A model file that cannot be written or does not fit the model (the message says why)."""


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ModelFileError("writing or reading .safetensors needs the safetensors package (pip install "
                             "'fp4dist[export]'); .pt files need nothing more") from None
    return safetensors.torch


def consolidated_model(checkpoint_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(the full model tensors by TP=1 name, the manifest) of one complete checkpoint, in this process."""
    manifest = checkpoint.verify(checkpoint_dir)
    reader = FileSystemReader(checkpoint_dir)
    metadata = reader.read_metadata()
    paths = metadata.planner_data or {}  # flattened key -> its path in the saved state dict
    model = {}
    for key, meta in metadata.state_dict_metadata.items():
        path = paths.get(key, tuple(key.split(".", 1)))
        if len(path) == 2 and path[0] == MODEL_KEY and isinstance(meta, TensorStorageMetadata):
            model[path[1]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not model:
        raise ModelFileError(f"{checkpoint_dir} holds no '{MODEL_KEY}' entry: not a training checkpoint")
    with checkpoint.single_process_quiet():
        dcp.load({MODEL_KEY: model}, storage_reader=reader, no_dist=True)
    return model, manifest


def write_model_file(tensors: dict[str, torch.Tensor], out: str | Path, manifest: dict | None = None) -> Path:
    """Write ``tensors`` to ``out`` (.safetensors or .pt) through a temporary file and a rename."""
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ModelFileError(f"{out}: the output must end in .safetensors or .pt")
    tensors = {name: t.detach().contiguous() for name, t in sorted(tensors.items())}
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        manifest = manifest or {}
        meta = {"format": "pt", "fp4dist.step": str(manifest.get("step")),
                "fp4dist.model": json.dumps(manifest.get("model")), "fp4dist.recipe": json.dumps(manifest.get("recipe"))}
        _safetensors().save_file(tensors, str(tmp), metadata=meta)
    else:
        torch.save(tensors, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


def export(checkpoint_dir: str | Path, out: str | Path) -> Path:
    """The checkpoint's consolidated model written to ``out`` (see the module docstring)."""
    if Path(out).suffix not in SUFFIXES:
        raise ModelFileError(f"{out}: the output must end in .safetensors or .pt")
    if Path(out).suffix == ".safetensors":
        _safetensors()  # before reading the checkpoint
    tensors, manifest = consolidated_model(checkpoint_dir)
    return write_model_file(tensors, out, manifest)


def read_model_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` of a .safetensors or .pt model file, on the CPU."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            tensors = _safetensors().load_file(str(path))
        elif path.suffix == ".pt":
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ModelFileError(f"{path}: a model file ends in .safetensors or .pt")
    except ModelFileError:
        raise
    except Exception as e:  # noqa: BLE001 - unreadable in any way: say which file and why
        raise ModelFileError(f"{path} cannot be read as a model file ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise ModelFileError(f"{path} is not a {{name: tensor}} model file")
    return tensors


def init_model(model: torch.nn.Module, path: str | Path, mesh=None) -> None:
    """Initialise ``model`` (any TP layout; ``mesh`` as fp4dist.dcp_state.training_mesh) from a model file.
    ModelFileError, with nothing changed, where its names or full shapes differ from the model's."""
    tensors = read_model_file(path)
    shapes = dcp_state.full_model_shapes(model, mesh)
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    wrong = [f"{n} {tuple(tensors[n].shape)} in the file, {tuple(shapes[n])} in the model"
             for n in sorted(set(shapes) & set(tensors)) if tensors[n].shape != shapes[n]]
    problems = ([f"missing {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")]
                if missing else []) + ([f"not in the model: {', '.join(unexpected[:5])}"] if unexpected else []) + wrong[:5]
    if problems:
        raise ModelFileError(f"{path} does not fit this model ({'; '.join(problems)}). Nothing was changed. Use the "
                             f"model config the file was exported from (a .safetensors file names it in its "
                             f"metadata).")
    dcp_state.load_full_model_state(model, tensors, mesh)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fp4dist.export", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a complete checkpoint directory, <checkpoint.dir>/step_NNNNNNNN")
    ap.add_argument("out", help="the model file to write: *.safetensors or *.pt")
    args = ap.parse_args(argv)
    try:
        if Path(args.out).suffix not in SUFFIXES:
            raise ModelFileError(f"{args.out}: the output must end in .safetensors or .pt")
        if Path(args.out).suffix == ".safetensors":
            _safetensors()  # before reading the checkpoint
        tensors, manifest = consolidated_model(args.checkpoint)
        out = write_model_file(tensors, args.out, manifest)
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {len(tensors)} tensors, {sum(t.numel() for t in tensors.values()) / 1e6:.2f}M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
