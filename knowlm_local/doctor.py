"""`knowlm-local doctor`: what this machine can run, and the fix for each thing that stops it.

Most "it is slow" and "out of memory" reports come down to a handful of
facts: a CPU-only build of llama-cpp-python next to a GPU, a CPU-only torch,
a missing bitsandbytes, a full disk, a model too large for the RAM. This
gathers them in one :class:`Report` (``--json`` for scripts) without loading
any model: GGUF and safetensors headers give the sizes, ``nvidia-smi`` (or
torch) the GPUs. Every probe is allowed to fail: a machine with no GPU, no
torch or no driver gets a report, not a traceback.
"""

from __future__ import annotations

import importlib.util
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from knowlm_local.memory_plan import GIB, available_ram_bytes, choose_dtype, max_context

LOW_DISK = 10 * GIB  # less than this free where models are written is a problem
LLAMA_CUDA_FIX = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
TORCH_CUDA_FIX = "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu124"


@dataclass
class Gpu:
    index: int
    name: str
    memory_total: int  # bytes
    memory_free: int
    driver: str = ""
    cuda: str = ""  # the CUDA version the driver supports


@dataclass
class ModelCheck:
    """One installed model: what runs it here, and the longest context that fits in free RAM."""

    name: str
    kind: str  # gguf, hf, lora, other
    where: str
    path: str
    size: int
    backends: list[str]
    max_context_ram: int  # tokens; 0 when the weights alone do not fit


@dataclass
class Problem:
    what: str
    fix: str


@dataclass
class Report:
    system: dict[str, Any]
    gpus: list[Gpu]
    llama_cpp: dict[str, Any]
    torch: dict[str, Any]
    packages: dict[str, str | None]  # name -> version, None when missing
    disk: list[dict[str, Any]]
    models: list[ModelCheck]
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _run(args: list[str]) -> str | None:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_gpus() -> list[Gpu] | None:
    """GPUs as ``nvidia-smi`` sees them (None when it is absent or fails)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    out = _run([exe, "--query-gpu=index,name,driver_version,memory.total,memory.free",
                "--format=csv,noheader,nounits"])
    if out is None:
        return None
    banner = _run([exe]) or ""
    match = re.search(r"CUDA Version:\s*([\d.]+)", banner)
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        try:
            gpus.append(Gpu(int(parts[0]), parts[1], int(parts[3]) * 1024 * 1024, int(parts[4]) * 1024 * 1024,
                            driver=parts[2], cuda=match.group(1) if match else ""))
        except ValueError:
            continue
    return gpus


def torch_info() -> tuple[dict[str, Any], list[Gpu]]:
    """torch's version, its CUDA build and the GPUs it sees (torch is imported only when installed)."""
    if importlib.util.find_spec("torch") is None:
        return {"version": None, "cuda": None, "cuda_available": False, "bf16": False}, []
    import torch

    cuda = torch.cuda.is_available()
    gpus = []
    if cuda:
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(Gpu(i, torch.cuda.get_device_name(i), int(total), int(free),
                            cuda=torch.version.cuda or ""))
    info = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda,
            "bf16": bool(cuda and torch.cuda.is_bf16_supported())}
    return info, gpus


def llama_info() -> dict[str, Any]:
    try:
        import llama_cpp
    except ImportError:
        return {"version": None, "gpu_offload": False}
    from knowlm_local.backends.llamacpp_cpu import amx_setting

    amx = {"kept": "kept (KNOWLM_LLAMA_AMX=1)", "off": "off (its kernel crashes on some CPUs)"}
    setting = amx_setting()
    return {"version": getattr(llama_cpp, "__version__", _version("llama-cpp-python")),
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "amx": amx.get(setting, setting)}  # an AMX build loads models without AMX buffers (llamacpp_cpu)


def disk_usage(label: str, path: Path) -> dict[str, Any]:
    """Free and total bytes on the disk that holds ``path`` (its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return {"what": label, "path": str(path), "free": usage.free, "total": usage.total}


def _gguf_check(m: Any, ram: int | None, gpus: list[Gpu], gpu_build: bool) -> tuple[list[str], int]:
    from knowlm_local.gguf_check import read_metadata
    from knowlm_local.gpu import kv_cache_bytes, plan_offload

    arch = str(read_metadata(m.path, {"general.architecture"}).get("general.architecture", "llama"))
    keys = ("block_count", "context_length", "embedding_length", "attention.head_count",
            "attention.head_count_kv")
    meta = read_metadata(m.path, {f"{arch}.{k}" for k in keys})
    n_layers, ctx_train, n_embd, n_head, n_head_kv = (int(meta.get(f"{arch}.{k}", 0) or 0) for k in keys)
    ctx_train = ctx_train or 4096
    per_token = kv_cache_bytes(1, n_layers, n_embd, n_head, n_head_kv)  # f16 K and V, llama.cpp's default
    weights = m.path.stat().st_size
    fit = max_context(ram, weights, per_token, ctx_train) if ram else ctx_train
    backends = ["llama.cpp (CPU)"] if fit else []
    if gpu_build and gpus:
        from knowlm_local.backends.llamacpp import DEFAULT_CTX_CAP

        plan = plan_offload(True, weights, per_token * min(ctx_train, DEFAULT_CTX_CAP), n_layers,
                            [g.memory_free for g in gpus])
        if plan.n_gpu_layers:
            layers = "all layers" if plan.n_gpu_layers < 0 else f"{plan.n_gpu_layers}/{n_layers} layers"
            backends.insert(0, f"llama.cpp (GPU, {layers})")
    return backends, fit


def _hf_check(m: Any, ram: int | None, torch: dict[str, Any], gpus: list[Gpu]) -> tuple[list[str], int]:
    import json

    from knowlm_local.memory_plan import model_blocks

    blocks = model_blocks(m.path)
    try:
        config = json.loads((m.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    config = config.get("text_config", config)
    if blocks is None or not torch.get("version"):
        return [], 0
    heads = int(config.get("num_attention_heads") or 1)
    kv_dim = int(config.get("hidden_size") or 0) // heads * int(config.get("num_key_value_heads") or heads)
    per_token = 2 * int(config.get("num_hidden_layers") or 0) * kv_dim * 4  # fp32 K and V on the CPU
    cap = int(config.get("max_position_embeddings") or 2048)
    fit = max_context(ram, blocks.nbytes("float32"), per_token, cap) if ram else cap
    backends = ["transformers (CPU, float32)"] if fit else []
    if torch.get("cuda_available") and gpus:
        dtype = choose_dtype(True, bool(torch.get("bf16")))
        need = blocks.nbytes(dtype)
        free = sum(g.memory_free for g in gpus)
        fits = need <= free * 0.9
        backends.insert(0, f"transformers (GPU, {dtype})" if fits
                        else f"transformers (GPU, {dtype}, needs --load-4bit or CPU offload)")
    return backends, fit


def check_models(ram: int | None, gpus: list[Gpu], gpu_build: bool,
                 torch: dict[str, Any]) -> list[ModelCheck]:
    from knowlm_local.errors import KnowLMError
    from knowlm_local.inventory import local_models

    checks = []
    for m in local_models():
        backends: list[str] = []
        fit = 0
        try:
            if m.kind == "gguf":
                backends, fit = _gguf_check(m, ram, gpus, gpu_build)
            elif m.kind == "hf":
                backends, fit = _hf_check(m, ram, torch, gpus)
        except (KnowLMError, OSError, ValueError):
            backends, fit = [], 0
        checks.append(ModelCheck(m.name, m.kind, m.where, str(m.path), m.size, backends, fit))
    return checks


def _problems(report: Report) -> list[Problem]:
    out: list[Problem] = []
    gpus, torch, pkgs = report.gpus, report.torch, report.packages
    if gpus and report.llama_cpp.get("version") and not report.llama_cpp.get("gpu_offload"):
        out.append(Problem(f"{len(gpus)} GPU(s) found, but llama-cpp-python was built without GPU offload: "
                           "GGUF models run on the CPU", LLAMA_CUDA_FIX))
    if gpus and torch.get("version") and not torch.get("cuda_available"):
        out.append(Problem(f"torch {torch['version']} cannot use the GPU (CPU build or driver mismatch)",
                           TORCH_CUDA_FIX))
    if torch.get("version") and not pkgs.get("xgrammar"):
        out.append(Problem("xgrammar is missing: JSON answers are not enforced on the transformers backend",
                           "pip install xgrammar"))
    if gpus and torch.get("cuda_available") and not pkgs.get("bitsandbytes"):
        out.append(Problem("bitsandbytes is missing: --load-4bit / --load-8bit are unavailable",
                           "pip install bitsandbytes"))
    if len(gpus) > 1 and torch.get("version") and not pkgs.get("accelerate"):
        out.append(Problem("accelerate is missing: Hugging Face models cannot be spread over the GPUs",
                           "pip install accelerate"))
    for d in report.disk:
        if d["free"] < LOW_DISK:
            out.append(Problem(f"only {d['free'] / GIB:.1f} GiB free in the {d['what']} ({d['path']})",
                               "free some space (knowlm-local rm NAME) or point KNOWLM_HOME / HF_HOME "
                               "at a larger disk"))
    for m in report.models:
        if m.kind == "lora":
            out.append(Problem(f"{m.name} is a LoRA adapter: no backend runs it alone",
                               f"merge and convert it: knowlm-local convert {m.name} --quant q4_k_m"))
        elif m.kind == "hf" and not torch.get("cuda_available"):
            slow = "transformers on the CPU is slow" + ("" if m.backends else " and it does not fit the RAM")
            out.append(Problem(f"{m.name} has only Hugging Face weights and no CUDA GPU is usable: {slow}",
                               f"convert it to a GGUF for llama.cpp: knowlm-local convert {m.name} "
                               "--quant q4_k_m"))
        elif m.kind == "gguf" and not m.backends:
            out.append(Problem(f"{m.name} ({m.size / GIB:.1f} GiB) does not fit the free RAM",
                               "use a smaller quantization (q4_k_m), or close other programs"))
    return out


def run_doctor() -> Report:
    """Probe this machine (nothing is loaded, nothing is downloaded)."""
    from knowlm_local.store import hf_cache, home

    ram = available_ram_bytes()
    torch, torch_gpus = torch_info()
    gpus = nvidia_gpus() or torch_gpus
    llama = llama_info()
    packages = {name: _version(name) for name in ("transformers", "accelerate", "bitsandbytes", "xgrammar")}
    system = {"python": platform.python_version(), "platform": platform.platform(),
              "machine": platform.machine(), "ram_available": ram,
              "metal": platform.system() == "Darwin" and platform.machine() == "arm64"}
    disk = [disk_usage("model store", home()), disk_usage("Hugging Face cache", hf_cache())]
    models = check_models(ram, gpus, bool(llama.get("gpu_offload")), torch)
    report = Report(system, gpus, llama, torch, packages, disk, models)
    report.problems = _problems(report)
    return report


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def print_report(report: Report, console: Any) -> None:
    """The report on one screen."""
    from rich.markup import escape

    s = report.system
    console.print(f"[bold]system[/bold]  Python {s['python']}, {s['platform']}, "
                  f"{gib(s['ram_available']) if s['ram_available'] else '?'} RAM free")
    if report.gpus:
        for g in report.gpus:
            console.print(f"[bold]GPU{g.index}[/bold]    {escape(g.name)}: {gib(g.memory_free)} free of "
                          f"{gib(g.memory_total)}, driver {g.driver or '?'}, CUDA {g.cuda or '?'}")
    else:
        console.print("[bold]GPU[/bold]     none found" + (" (Apple Metal)" if s["metal"] else ""))
    ll, t = report.llama_cpp, report.torch
    console.print(f"[bold]llama.cpp[/bold] {ll.get('version') or 'missing'}, GPU offload: "
                  f"{'yes' if ll.get('gpu_offload') else 'no'}, AMX kernels: {ll.get('amx', 'not built')}")
    console.print(f"[bold]torch[/bold]   {t.get('version') or 'missing'}, "
                  f"CUDA build: {t.get('cuda') or 'none'}, "
                  f"CUDA usable: {'yes' if t.get('cuda_available') else 'no'}")
    packages = ", ".join(f"{k} {v or 'missing'}" for k, v in report.packages.items())
    console.print(f"[bold]packages[/bold] {packages}")
    for d in report.disk:
        console.print(f"[bold]disk[/bold]    {d['what']}: {gib(d['free'])} free of {gib(d['total'])} "
                      f"({escape(d['path'])})")
    for m in report.models:
        runs = ", ".join(m.backends) or "nothing here"
        ctx = f", context up to {m.max_context_ram} tokens in RAM" if m.max_context_ram else ""
        console.print(f"[bold]model[/bold]   {escape(m.name)} ({m.kind}, {gib(m.size)}): {escape(runs)}{ctx}")
    if not report.problems:
        console.print("[green]no problems found[/green]")
    for p in report.problems:
        console.print(f"[yellow]problem:[/yellow] {escape(p.what)}\n  [bold]fix:[/bold] {escape(p.fix)}")
