"""`knowlm-local convert`: name -> HF weights (+ LoRA, + ZhiXi diff) -> GGUF -> quant types -> store.

The plan is made before anything is written: every output path, whether it
may be overwritten, how much disk it needs. One quant type that our writer
produces directly (F32, F16, BF16, Q8_0) is written straight from the source;
anything else goes through one F16/BF16/F32 GGUF from which libllama makes
every requested type, so the source is read exactly once. The results land
in the store as ``<slug>-<quant>.gguf`` with ``provenance.json``, which is
where ``chat -m NAME:QUANT`` looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from knowlm_local.convert.hf_to_gguf import DIRECT_TYPES, LlamaSpec, read_config, write_gguf
from knowlm_local.convert.outputs import (
    check_space,
    disk_error,
    merged_adapters,
    now,
    publish,
    record_provenance,
    refuse_existing,
    tool_versions,
)
from knowlm_local.convert.progress import Progress
from knowlm_local.convert.quantize import FLOAT_TYPES, bits_per_weight, parse_quants, quantize, read_imatrix
from knowlm_local.convert.resolve import Source, check_base_name, resolve_source

from knowlm_local.errors import KnowLMError


@dataclass
class Prepared:
    """A source opened for streaming: the weights, the model shape and the vocabulary."""

    source: Source
    stream: object
    spec: LlamaSpec
    vocab: object
    adapter: object = None
    diff: object = None
    md5: dict = field(default_factory=dict)


@dataclass
class ConvertResult:
    name: str
    outputs: dict[str, Path]  # quant -> file
    provenance: Path
    verify: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def prepare(
    spec: str,
    lora: str | Path | None = None,
    diff_base: str | Path | None = None,
    revision: str | None = None,
    tokenizer_pre: str | None = None,
    skip_base_check: bool = False,
    skip_checksum: bool = False,
    expected_sum: float | None = None,
    progress: Progress | None = None,
    need_vocab: bool = True,
) -> Prepared:
    """Resolve ``spec`` and open everything the writers need; every bad-input check happens here."""
    from knowlm_local.convert.diff_weights import KNOWN_MD5, ZHIXI_FP32_SUM, DiffRecovery, md5_check
    from knowlm_local.convert.lora import LoraAdapter
    from knowlm_local.convert.source import WeightStream
    from knowlm_local.convert.tensors import Checkpoint
    from knowlm_local.convert.tokenizer import load_vocab

    progress = progress or Progress()
    source = resolve_source(str(spec), revision)
    if lora is not None:
        if source.lora is not None:
            raise KnowLMError(
                f"{spec} already brings a LoRA adapter", "drop --lora, or convert its base with --lora"
            )
        source.lora = Path(lora).expanduser()
        if not source.lora.exists():
            raise KnowLMError(f"no such adapter folder: {lora}", "check the path")
        source.label = f"{source.label}-{source.lora.resolve().name}"
    config = read_config(source.folder)
    model_spec = LlamaSpec.from_config(config, source.folder)
    ckpt = Checkpoint(source.folder)
    diff = None
    md5 = {}
    if diff_base is not None:
        base = Checkpoint(resolve_source(str(diff_base)).folder)
        if not skip_checksum:
            total = sum(p.stat().st_size for p in ckpt.files if p.name in KNOWN_MD5)
            with progress.bytes("checking diff MD5", total) as advance:
                md5 = md5_check(ckpt.files, advance)
        expected = None if skip_checksum else (expected_sum if expected_sum is not None else ZHIXI_FP32_SUM)
        diff = DiffRecovery(ckpt, base, expected)
        source.label = source.label.removesuffix("-diff")
    adapter = None
    if source.lora is not None:
        adapter = LoraAdapter(source.lora)
        adapter.check_against(ckpt.meta, source.label)
        if not skip_base_check:
            check_base_name(adapter.base_model_name, source)
        fingerprint = adapter.fingerprint()
        if any(a.get("sha256") == fingerprint for a in merged_adapters(source.folder)):
            raise KnowLMError(
                f"{source.folder} already has the adapter {source.lora} merged into its weights "
                "(see its provenance.json)",
                "convert it without --lora; merging twice doubles the change",
            )
        adapter.sha256 = fingerprint
    stream = WeightStream(ckpt, lora=adapter, diff=diff, tie_word_embeddings=model_spec.tied)
    vocab = None
    if need_vocab:
        n_vocab = stream.meta("model.embed_tokens.weight").shape[0]
        vocab = load_vocab(source.folder, n_vocab, config, pre=tokenizer_pre)
    return Prepared(source, stream, model_spec, vocab, adapter, diff, md5)


def _plan(quants: list[str], source_dtype: str) -> tuple[str | None, list[str]]:
    """(intermediate type or None, types libllama makes from it)."""
    if len(quants) == 1 and quants[0] in DIRECT_TYPES:
        return None, []
    floats = [q for q in FLOAT_TYPES if q in quants]
    inter = floats[0] if floats else ("bf16" if source_dtype == "BF16" else "f16")
    return inter, [q for q in quants if q != inter]


def _estimate(n_params: int, quant: str) -> int:
    return int(n_params * bits_per_weight(quant) / 8 * 1.10) + 16 * 1024 * 1024


def _info(prep: Prepared) -> dict:
    card = prep.source.lora_card or prep.source.card
    n = sum(m.n_elements for m in prep.stream.items())
    import gguf

    return {
        "name": card.display_name if card else prep.source.label,
        "license": card.license if card else None,
        "size_label": gguf.size_label(n, 0, 0, 0),
        "source_url": card.source if card else None,
        "repo_url": f"https://huggingface.co/{prep.source.repo}" if prep.source.repo else None,
    }


def convert(
    spec: str,
    quants="q4_k_m",
    lora: str | Path | None = None,
    output: str | Path | None = None,
    name: str | None = None,
    force: bool = False,
    verify: bool = False,
    imatrix: str | Path | None = None,
    diff_base: str | Path | None = None,
    revision: str | None = None,
    tokenizer_pre: str | None = None,
    skip_base_check: bool = False,
    skip_checksum: bool = False,
    expected_sum: float | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> ConvertResult:
    """Convert ``spec`` (zoo name, repo id or folder; + ``lora``; + ``diff_base``) to GGUF ``quants``."""
    from knowlm_local.io_utils import atomic_path

    progress = progress or Progress()
    wanted = parse_quants(quants)
    if verify and diff_base is not None:
        raise KnowLMError(
            "--verify cannot check a diff recovery: there is no Hugging Face folder of the recovered "
            "weights to compare with",
            "write one with `knowlm-local merge ... --diff-base` and run "
            "`knowlm-local verify GGUF THAT_FOLDER`",
        )
    imatrix_data = read_imatrix(Path(imatrix)) if imatrix else None
    prep = prepare(
        spec,
        lora=lora,
        diff_base=diff_base,
        revision=revision,
        tokenizer_pre=tokenizer_pre,
        skip_base_check=skip_base_check,
        skip_checksum=skip_checksum,
        expected_sum=expected_sum,
        progress=progress,
    )
    label = name or prep.source.label
    folder, stem = _destination(label, output, wanted)
    created = not folder.exists()
    targets = {
        q: folder / f"{stem}-{q}.gguf" if not str(output or "").endswith(".gguf") else Path(output)
        for q in wanted
    }
    refuse_existing(list(targets.values()), force)
    inter, derived = _plan(wanted, prep.stream.source_dtype)
    n_params = sum(m.n_elements for m in prep.stream.items())
    need = sum(_estimate(n_params, q) for q in wanted) + (
        _estimate(n_params, inter) if inter and inter not in wanted else 0
    )
    check_space(folder, need, f"{label} ({', '.join(wanted)})")
    warnings = list(prep.vocab.warnings)
    base_record = _base_record(prep, imatrix)
    records: dict[str, dict] = {}
    first = inter or wanted[0]
    first_path = targets.get(first) or folder / f".{stem}-{first}.intermediate.gguf"
    made: list[Path] = []
    try:
        try:
            with atomic_path(first_path) as tmp:
                with progress.bytes(f"{label} -> {first}", prep.stream.total_bytes) as advance:
                    written = write_gguf(prep.stream, prep.spec, prep.vocab, tmp, first, _info(prep), advance)
        except OSError as exc:
            raise disk_error(exc, first_path) from exc
        made.append(first_path)
        publish(first_path)
        if written.get("diff_checksum"):
            base_record["diff"]["checksum"] = written["diff_checksum"]
        for q in derived:
            try:
                with progress.spinner(f"quantizing {label} to {q}"), atomic_path(targets[q]) as tmp:
                    quantize(first_path, tmp, q, imatrix_data, threads)
            except OSError as exc:
                raise disk_error(exc, targets[q]) from exc
            made.append(targets[q])
            publish(targets[q])
        outputs = {q: targets[q] for q in wanted}
        results = []
        if verify:
            results = _verify(prep, first_path, outputs, threads, progress)
        for q, path in outputs.items():
            records[path.name] = {
                **base_record,
                "quant": q,
                "file": path.name,
                "size": path.stat().st_size,
                "intermediate": first if q != first else None,
                "created": now(),
                "verify": next((r.as_dict() for r in results if Path(r.gguf) == path), None),
            }
        prov = record_provenance(folder, label, records)
    except BaseException:
        # Nothing half-done stays: what this run made (an unverified or partial set) is removed.
        for path in made + ([first_path] if first not in wanted else []):
            path.unlink(missing_ok=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    finally:
        if first not in wanted:
            first_path.unlink(missing_ok=True)
    _hint_usage(progress, label, outputs, output)
    return ConvertResult(label, outputs, prov, results, warnings)


def _destination(label: str, output, quants: list[str]) -> tuple[Path, str]:
    from knowlm_local import store

    if output is None:
        return store.model_dir(label), store.slug(label)
    out = Path(output).expanduser()
    if out.suffix == ".gguf":
        if len(quants) != 1:
            raise KnowLMError(
                "--output names one .gguf file but several quant types were asked for",
                "pass a folder as --output",
            )
        return out.parent, out.stem
    if out.exists() and not out.is_dir():
        raise KnowLMError(f"--output {out} is an existing file, not a folder or a .gguf name",
                          "pass a folder, or a file name ending in .gguf")
    return out, store.slug(label)


def _base_record(prep: Prepared, imatrix) -> dict:
    adapter = None
    if prep.adapter is not None:
        adapter = {**prep.adapter.describe(), "sha256": prep.adapter.sha256, **prep.source.extra}
    diff = None
    if prep.diff is not None:
        diff = {"base": str(prep.diff.base.folder.resolve()), "md5": prep.md5, "checksum": None}
    return {
        "source": prep.source.record(),
        "adapter": adapter,
        "diff": diff,
        "imatrix": str(Path(imatrix).resolve()) if imatrix else None,
        "tool": tool_versions(),
    }


def _verify(prep: Prepared, first_path: Path, outputs: dict[str, Path], threads, progress: Progress) -> list:
    """Strict check of the file every quant came from, then each output; raise on any failure."""
    from knowlm_local.convert.verify import DEFAULT_PROMPTS, compare, reference_logits, require_pass

    prompts = list(DEFAULT_PROMPTS)
    with progress.spinner("verify: reference logits from transformers"):
        ids, ref = reference_logits(prep.source.folder, prompts, prep.source.lora)
    paths = [first_path] + [p for p in outputs.values() if p != first_path]
    results = []
    for path in paths:
        with progress.spinner(f"verify: {path.name}"):
            result = compare(path, prompts, ids, ref, threads=threads)
        progress.say(result.line())
        results.append(result)
    require_pass(results, removed=True)
    return results


def _hint_usage(progress: Progress, label: str, outputs: dict[str, Path], output) -> None:
    for q, path in outputs.items():
        target = f"{label}:{q}" if output is None else str(path)  # the store resolves NAME:QUANT
        progress.say(f"{path.name}: use it with `knowlm-local chat -m {target}`")
