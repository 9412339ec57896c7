"""The library functions under ``knowlm-local edit``: apply edits, evaluate them, save them, undo them."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_local.edit.requests import EditRequest
from knowlm_local.errors import KnowLMError

METHODS = ("rome", "memit", "ike")
REPORT = "edit-report.json"


@dataclass(frozen=True)
class EditOptions:
    method: str = "rome"
    layers: tuple[int, ...] | None = None  # ROME: one layer; MEMIT: the range; None: scaled from EasyEdit's
    contexts: int = 1  # self-written context prefixes per opening word (5 openings)
    chat: bool = True  # also edit and evaluate the prompt as a chat turn
    evaluate: bool = True
    fluency: bool = True
    cov_text: str | None = "self"  # a text file whose MLP keys give the covariance; "self": the model's own text
    cov_tokens: int = 20000
    ridge: float = 0.01  # added to the covariance's diagonal, relative to its mean diagonal
    preserve_prompt: bool = True  # ROME: the update leaves the keys at the prompts' other positions unchanged
    mom2_weight: float = 15000.0  # MEMIT's lambda
    seed: int = 0
    device: str | None = None
    value: Any = None  # rome.ValueParams; None: the defaults
    gguf: str | None = None  # re-evaluate through llama.cpp at these precisions ("f16,q8_0,q4_k_m")


@dataclass
class EditReport:
    folder: Path
    method: str
    edits: list[int] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_per_edit: float = 0.0
    report_path: Path | None = None
    gguf: dict[str, Any] = field(default_factory=dict)


def resolve_target(spec: str, output: str | None, force: bool) -> tuple[Path, Path, str, bool]:
    """``(source folder, output folder, source name, in place)`` for ``edit SPEC [-o OUTPUT]``."""
    from knowlm_local.edit.log import LOG
    from knowlm_local.train.base import resolve_base

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        raise KnowLMError(f"{spec} is a GGUF: weight edits need the Hugging Face weights",
                          "edit the HF folder (e.g. the model's zoo name or ./model-hf), then convert the result; "
                          "--method ike works on any model")
    base = resolve_base(spec)
    source = Path(base.folder)
    if output is None:
        if (source / LOG).is_file():
            return source, source, base.name, True
        stem = (base.name.split("/")[-1] if not Path(base.name).exists() else Path(base.name).resolve().name)
        output = f"{stem}-edited"
    out = Path(output).expanduser()
    if out.resolve() == source.resolve():
        return source, source, base.name, True
    return source, out, base.name, False


def _say(say: Callable[[str], Any] | None, text: str) -> None:
    if say:
        say(text)


def apply_edits(spec: str, requests: list[EditRequest], output: str | None = None,
                opts: EditOptions = EditOptions(), force: bool = False,
                say: Callable[[str], Any] | None = None) -> EditReport:
    """Edit the model ``spec`` with ``requests`` into ``output``, evaluate, save the edit log and a report."""
    from knowlm_local.edit import evaluate as ev
    from knowlm_local.edit import log as editlog
    from knowlm_local.edit.contexts import self_contexts
    from knowlm_local.edit.model import EditableModel

    if opts.method not in METHODS:
        raise KnowLMError(f"unknown edit method {opts.method!r}", f"use one of {', '.join(METHODS)}")
    if not requests:
        raise KnowLMError("no edit requests", "pass --prompt/--subject/--target or --requests FILE")
    if opts.method == "ike":
        return _ike(spec, requests, output, opts, force, say)
    source, out, name, in_place = resolve_target(spec, output, force)
    if not in_place and out.exists() and not force:  # say so now, not after minutes of work
        raise KnowLMError(f"{out} already exists", "pass --force to replace it, or edit it in place with "
                          f"`knowlm-local edit {out} ...` (its edits are appended to its log)")
    t0 = time.perf_counter()
    em_source = out if in_place else source
    _say(say, f"loading {em_source}")
    em = EditableModel(em_source, device=opts.device)
    layers = _layers(em, opts)
    _say(say, "writing context prefixes")
    contexts = self_contexts(em, opts.contexts, seed=opts.seed)
    scorer = ev.TorchScorer(em)
    chat = em.chat if opts.chat and getattr(em.tok, "chat_template", None) else None
    bases = [ev.baseline(scorer, r, fluency=opts.fluency) for r in requests] if opts.evaluate else []
    before = ([ev.evaluate(scorer, r, b, chat, fluency=False) for r, b in zip(requests, bases)]
              if opts.evaluate else [])
    disk_dtypes = _disk_dtypes(em_source)
    t_edit = time.perf_counter()
    run = _rome if opts.method == "rome" else _memit
    pending = run(em, requests, contexts, layers, opts, disk_dtypes, say)  # nothing is written before this ends
    edit_seconds = time.perf_counter() - t_edit
    if not in_place:
        editlog.make_output(source, out, force=force)
    log = editlog.EditLog.load(out)
    log.source = log.source or name
    entries = [editlog.record(log, *p) for p in pending]
    log.save()  # the log first: a crash before the weights are written leaves edits that undo to no change
    editlog.write_tensors(out, {t: em.model.get_parameter(t) for e in entries for t in e.tensors})
    report = EditReport(out, opts.method, [e.n for e in entries], seconds_per_edit=edit_seconds / len(requests))
    if opts.evaluate:
        _say(say, "evaluating")
        report.results = [{"id": r.id, **ev.evaluate(scorer, r, b, chat, fluency=opts.fluency)}
                          for r, b in zip(requests, bases)]
        report.summary = ev.summarize(report.results)
        report.before = ev.summarize(before)
        for e in entries:
            ids = {str(q.get("id")) for q in e.requests}
            e.summary = ev.summarize([r for r in report.results if str(r["id"]) in ids])
        log.save()
        if opts.gguf:
            from knowlm_local.edit.gguf_check import check_gguf

            report.gguf = check_gguf(out, requests, opts.gguf, chat, say, fluency=opts.fluency)
    report.seconds = time.perf_counter() - t0
    report.report_path = _write_report(out, report, requests)
    return report


def _layers(em, opts: EditOptions) -> list[int]:
    """The layer(s) to edit, checked against the model before anything is written."""
    from knowlm_local.edit import memit, rome

    layers = list(opts.layers) if opts.layers else None
    if opts.method == "rome":
        if layers and len(layers) != 1:
            raise KnowLMError("ROME edits one layer", "pass one --layer, or use --method memit for a range")
        layers = layers or [rome.default_layer(em.n_layers)]
    else:
        layers = layers or memit.default_layers(em.n_layers)
    em.check_layers(layers)
    return layers


def _ike(spec: str, requests: list[EditRequest], output: str | None, opts: EditOptions, force: bool,
         say: Callable[[str], Any] | None) -> EditReport:
    """Write (or extend) an edit memory and evaluate it in context on the unchanged model."""
    from knowlm_local.edit import evaluate as ev
    from knowlm_local.edit import ike
    from knowlm_local.edit.model import EditableModel
    from knowlm_local.train.base import resolve_base

    t0 = time.perf_counter()
    base = resolve_base(spec)
    stem = Path(base.name).name if Path(base.name).exists() else base.name.split("/")[-1]
    out = Path(output or f"{stem}-ike.json").expanduser()
    if out.is_dir():
        raise KnowLMError(f"{out} is a folder: IKE writes a memory file", "pass -o facts.json")
    facts = (ike.read_memory(out) if out.exists() and not force else []) + list(requests)
    report = EditReport(out, "ike")
    if opts.evaluate:
        _say(say, f"loading {base.folder}")
        em = EditableModel(base.folder, device=opts.device, check_arch=False)
        scorer = ev.TorchScorer(em)
        system = ike.chat_system(facts)
        chat = (lambda p: em.chat(p, system)) if opts.chat and getattr(em.tok, "chat_template", None) else None
        bare = (lambda p: em.chat(p)) if chat else None
        _say(say, "evaluating in context (no weights change)")
        for r in requests:
            b = ev.baseline(scorer, r, fluency=opts.fluency)
            report.before.setdefault("results", []).append(ev.evaluate(scorer, r, b, bare, fluency=False))
            report.results.append({"id": r.id, **ev.evaluate(scorer, ike.in_context(facts, r), b, chat,
                                                             fluency=opts.fluency)})
        report.before = ev.summarize(report.before["results"])
        report.summary = ev.summarize(report.results)
    ike.write_memory(out, list(requests), base.name, force=force)
    report.seconds = time.perf_counter() - t0
    report.seconds_per_edit = report.seconds / len(requests)
    return report


def _disk_dtypes(folder: Path) -> dict[str, Any]:
    from safetensors import safe_open

    from knowlm_local.edit.log import tensor_files

    out: dict[str, Any] = {}
    for name, shard in tensor_files(folder).items():
        if ".mlp.down_proj." in name:
            with safe_open(Path(folder) / shard, "pt") as fh:
                out[name] = fh.get_slice(name).get_dtype()
    return out


def _original(em, name: str, disk_dtypes: dict[str, Any]):
    """The tensor as it is on disk now, from memory: the in-memory copy cast back to the file's dtype."""
    import torch

    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(disk_dtypes.get(name, "F32"))
    if dtype is None:
        raise KnowLMError(f"{name} is stored as {disk_dtypes.get(name)}", "edit a float32/float16/bfloat16 checkpoint")
    return em.model.get_parameter(name).detach().to(dtype).cpu().clone()


def _rome(em, requests, contexts, layers, opts, disk_dtypes, say) -> list[tuple]:
    """Apply each request in turn (sequential edits) in memory; the log entries to record, in order."""
    import torch

    from knowlm_local.edit import covariance, rome
    from knowlm_local.edit.model import module_name

    layer = layers[0]
    inv = covariance.inverse(em, layer, opts) if opts.cov_text else None
    vp = opts.value or rome.ValueParams()
    entries = []
    for i, req in enumerate(requests, 1):
        _say(say, f"edit {i}/{len(requests)}: {req.subject!r} -> {req.target!r} (ROME, layer {layer})")
        k, others = rome.compute_keys(em, layer, rome.key_texts(em, req, contexts, opts.chat))
        delta, info = rome.compute_delta(em, layer, req, contexts, vp, opts.chat)
        left, right = rome.rank_one(k, delta, inv, others if opts.preserve_prompt else None)
        name = module_name(layer)
        original = _original(em, name, disk_dtypes)
        entries.append(("rome", [layer], [{**req.to_json(), "id": req.id, "fit": info}],
                        {name: original}, {name: (left[:, None], right[:, None])}))
        with torch.no_grad():
            w = em.weight(layer)
            w += torch.outer(left, right).to(w.dtype)
    return entries


def _memit(em, requests, contexts, layers, opts, disk_dtypes, say) -> list[tuple]:
    """Apply the whole batch in memory; one log entry to record."""
    from knowlm_local.edit import memit
    from knowlm_local.edit.model import module_name

    _say(say, f"MEMIT: {len(requests)} edit(s) over layers {layers[0]}-{layers[-1]}")
    originals = {module_name(n): _original(em, module_name(n), disk_dtypes) for n in layers}
    factors = memit.apply(em, requests, contexts, layers, opts, say)
    reqs = [{**r.to_json(), "id": r.id} for r in requests]
    return [("memit", layers, reqs, originals, factors)]


def _write_report(out: Path, report: EditReport, requests: list[EditRequest]) -> Path:
    from knowlm_local.io_utils import atomic_write_text

    data = {"method": report.method, "folder": str(out), "edits": report.edits, "seconds": round(report.seconds, 2),
            "seconds_per_edit": round(report.seconds_per_edit, 2), "summary": report.summary,
            "before": report.before, "results": report.results, "gguf": report.gguf}
    path = out / REPORT
    atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")
    return path


def undo_edit(folder: str, n: int, cascade: bool = False) -> list[int]:
    from knowlm_local.edit.log import undo

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise KnowLMError(f"no such folder: {folder}", "pass the edited model's folder")
    return undo(path, n, cascade)


def list_edits(folder: str) -> list:
    from knowlm_local.edit.log import LOG, EditLog

    path = Path(folder).expanduser()
    if not (path / LOG).is_file():
        raise KnowLMError(f"{folder} has no edit log ({LOG})", "only folders written by `knowlm-local edit` have one")
    return EditLog.load(path).entries


__all__ = ["EditOptions", "EditReport", "apply_edits", "undo_edit", "list_edits"]
