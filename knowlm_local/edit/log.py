"""The edited folder and its edit log: every weight edit can be listed and undone, bit for bit.

An edited model is an ordinary HF folder (it converts, merges and trains like
any other) plus:

* ``edits.json``: the log, one entry per edit (method, layers, tensors, the
  request(s), when, its evaluation summary, whether it was undone);
* ``edits/NNNN.safetensors``: for each tensor the edit changed, the tensor as it
  was before (its own dtype: this is what makes ``--undo`` exact) and the update's
  factors (``left @ right.T`` for ROME, ``left @ right.T`` of rank = batch for MEMIT).

Undoing edit N puts N's saved tensors back. If a later, still active edit
changed one of the same tensors, putting them back would silently drop the
later one too, so that is refused unless asked (``cascade``), and then the later
edits are undone first, newest first. A new folder is made from hard links to
the source's files (no copy of a 13B model's weights); a changed shard is
written beside the old one and renamed over it, so the source is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.io_utils import atomic_path, atomic_write_text, write_error

LOG = "edits.json"
FOLDER = "edits"
INDEX = "model.safetensors.index.json"


@dataclass
class Entry:
    n: int
    method: str
    layers: list[int]
    tensors: list[str]
    requests: list[dict[str, Any]]
    file: str
    created: str
    sha256: dict[str, str] = field(default_factory=dict)  # of each original tensor's bytes
    summary: dict[str, Any] | None = None
    undone: str | None = None


@dataclass
class EditLog:
    folder: Path
    source: str = ""
    entries: list[Entry] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> EditLog:
        from knowlm_local.jsonio import read_json

        path = Path(folder) / LOG
        if not path.is_file():
            return cls(Path(folder))
        data = read_json(path, "edit log", hint=f"the edit log is damaged; restore {path} from a backup")
        try:
            entries = [Entry(**e) for e in data.get("edits", [])]
        except TypeError as exc:
            raise KnowLMError(f"{path}: an entry is not an edit record ({exc})",
                              f"the edit log is damaged; restore {path} from a backup") from None
        return cls(Path(folder), str(data.get("source", "")), entries)

    def save(self) -> None:
        data = {"format": 1, "source": self.source, "edits": [asdict(e) for e in self.entries]}
        atomic_write_text(self.folder / LOG, json.dumps(data, ensure_ascii=False, indent=2) + "\n")

    def active(self) -> list[Entry]:
        return [e for e in self.entries if not e.undone]

    def get(self, n: int) -> Entry:
        for e in self.entries:
            if e.n == n:
                if e.undone:
                    raise KnowLMError(f"edit {n} was already undone ({e.undone})",
                                      "see the active edits with `knowlm-local edit FOLDER --log`")
                return e
        have = ", ".join(str(e.n) for e in self.active()) or "none"
        raise KnowLMError(f"there is no edit {n} in {self.folder / LOG}",
                          f"active edits: {have} (see `knowlm-local edit {self.folder} --log`)")


# -- the weights on disk --------------------------------------------------------------------------

def tensor_files(folder: Path) -> dict[str, str]:
    """Which safetensors file of ``folder`` holds each tensor."""
    folder = Path(folder)
    index = folder / INDEX
    if index.is_file():
        from knowlm_local.jsonio import read_json

        return dict(read_json(index, "safetensors index").get("weight_map", {}))
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise KnowLMError(f"{folder} has no safetensors weights",
                          "editing needs an HF folder with *.safetensors (convert .bin checkpoints first)")
    from safetensors import safe_open

    out = {}
    for name in files:
        with safe_open(folder / name, "pt") as fh:
            out.update({k: name for k in fh.keys()})
    return out


def read_tensors(folder: Path, names: list[str]) -> dict[str, Any]:
    from safetensors import safe_open

    where = tensor_files(folder)
    out = {}
    for name in names:
        if name not in where:
            raise KnowLMError(f"{folder} has no tensor {name}", "is this the model the edit was made on?")
        with safe_open(Path(folder) / where[name], "pt") as fh:
            out[name] = fh.get_tensor(name)
    return out


def write_tensors(folder: Path, new: dict[str, Any]) -> None:
    """Replace tensors in their shards: each changed shard is rewritten beside itself and renamed over."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    where = tensor_files(folder)
    for shard in sorted({where[n] for n in new}):
        path = Path(folder) / shard
        with safe_open(path, "pt") as fh:
            meta = fh.metadata() or {"format": "pt"}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        for name, value in new.items():
            if where[name] == shard:
                tensors[name] = value.detach().to(tensors[name].dtype).cpu().contiguous()
        with atomic_path(path) as tmp:
            try:
                save_file(tensors, str(tmp), metadata=meta)
            except OSError as exc:
                raise write_error(exc, path) from None


def digest(tensor) -> str:
    return hashlib.sha256(tensor.contiguous().view(-1).view(dtype=_u8()).numpy().tobytes()).hexdigest()


def _u8():
    import torch

    return torch.uint8


# -- folders ---------------------------------------------------------------------------------------

def make_output(source: Path, out: Path, force: bool = False) -> Path:
    """``out`` as a copy of the HF folder ``source`` made of hard links (copies across file systems)."""
    from knowlm_local.convert.outputs import atomic_dir

    source, out = Path(source), Path(out)
    if out.exists() and not force:
        raise KnowLMError(f"{out} already exists",
                          "pass --force to replace it, or edit it in place with `knowlm-local edit "
                          f"{out} ...` (its edits are appended to its log)")
    with atomic_dir(out, force=True) as tmp:
        for item in source.iterdir():
            if item.name.startswith(".") or item.name in (LOG, FOLDER):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
                continue
            try:
                os.link(item, tmp / item.name)
            except OSError:
                shutil.copy2(item, tmp / item.name)
        old = EditLog.load(source)
        if old.entries:  # editing an edited model into a new folder: its history comes along
            shutil.copytree(source / FOLDER, tmp / FOLDER)
            shutil.copy2(source / LOG, tmp / LOG)
    return out


def record(log: EditLog, method: str, layers: list[int], requests: list[dict[str, Any]],
           originals: dict[str, Any], factors: dict[str, tuple[Any, Any]],
           summary: dict[str, Any] | None = None) -> Entry:
    """Save the originals and factors of a new edit and append it to the log (call before changing weights)."""
    from safetensors.torch import save_file

    n = max((e.n for e in log.entries), default=0) + 1
    rel = f"{FOLDER}/{n:04d}.safetensors"
    tensors = {f"original/{k}": v.contiguous() for k, v in originals.items()}
    for k, (left, right) in factors.items():
        tensors[f"left/{k}"] = left.detach().float().cpu().contiguous()
        tensors[f"right/{k}"] = right.detach().float().cpu().contiguous()
    dest = log.folder / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={"method": method, "edit": str(n)})
    entry = Entry(n=n, method=method, layers=layers, tensors=sorted(originals), requests=requests, file=rel,
                  created=time.strftime("%Y-%m-%d %H:%M:%S"), sha256={k: digest(v) for k, v in originals.items()},
                  summary=summary)
    log.entries.append(entry)
    return entry


def undo(folder: Path, n: int, cascade: bool = False) -> list[int]:
    """Undo edit ``n`` (and, with ``cascade``, the later edits that share a tensor with it); the numbers undone."""
    from safetensors import safe_open

    log = EditLog.load(folder)
    if not log.entries:
        raise KnowLMError(f"{folder} has no edit log ({LOG})", "only folders written by `knowlm-local edit` have edits")
    first = log.get(n)
    chain, touched = [first], set(first.tensors)
    for e in log.active():
        if e.n > n and touched & set(e.tensors):
            chain.append(e)
            touched |= set(e.tensors)
    if len(chain) > 1 and not cascade:
        later = ", ".join(str(e.n) for e in chain[1:])
        raise KnowLMError(f"edit {n} changed the same weights as later edit(s) {later}",
                          f"undo those first, or pass --cascade to undo {n} and {later} together")
    for e in sorted(chain, key=lambda e: -e.n):
        path = Path(folder) / e.file
        if not path.is_file():
            raise KnowLMError(f"the saved weights of edit {e.n} are missing ({path})",
                              "the edit cannot be undone exactly; restore the file or re-create the folder")
        with safe_open(path, "pt") as fh:
            originals = {k: fh.get_tensor(f"original/{k}") for k in e.tensors}
        bad = [k for k, v in originals.items() if e.sha256.get(k) and digest(v) != e.sha256[k]]
        if bad:
            raise KnowLMError(f"the saved weights of edit {e.n} are damaged ({bad[0]})",
                              "the edit cannot be undone exactly; restore the edits/ folder from a backup")
        write_tensors(Path(folder), originals)
        e.undone = time.strftime("%Y-%m-%d %H:%M:%S")
        log.save()
        with contextlib.suppress(OSError):
            path.unlink()
    return [e.n for e in chain]
