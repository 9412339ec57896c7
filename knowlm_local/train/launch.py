"""Several GPUs or nodes: hand the run to torchrun or DeepSpeed's launcher, never to home-made code.

``finetune``/``pretrain`` run in-process on one device. Asked for several
GPUs (``gpus: 4``) or given a hostfile, they start the same run under a
launcher, which calls ``python -m knowlm_local.train.entry`` once per
process; the launcher's environment (``WORLD_SIZE``, ``LOCAL_RANK``) then
makes transformers' Trainer (and DeepSpeed) distributed. ``--print-command``
prints that command instead, for schedulers (Slurm, Kubernetes) that start
the processes themselves.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from knowlm_local.errors import KnowLMError

LAUNCHED_ENV = ("WORLD_SIZE", "LOCAL_RANK")


def under_launcher() -> bool:
    return any(k in os.environ for k in LAUNCHED_ENV)


def hostfile_slots(path: str) -> int:
    """GPUs per node from a DeepSpeed hostfile (``host slots=N`` lines), checked for shape."""
    from knowlm_local.jsonio import decode_utf8, read_bytes

    text = decode_utf8(read_bytes(Path(path), "hostfile", "a hostfile lists `hostname slots=N` lines"), path)
    slots = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("slots=") or not parts[1][6:].isdigit():
            raise KnowLMError(f"line {n} of {path} is not `hostname slots=N`: {line!r}", "fix the hostfile there")
        slots.append(int(parts[1][6:]))
    if not slots:
        raise KnowLMError(f"{path} lists no hosts", "write one `hostname slots=N` line per node")
    return min(slots)


def launch_command(kind: str, config: str | None, passthrough: list[str], gpus: int, hostfile: str,
                   deepspeed: str) -> list[str] | None:
    """The launcher command for this run, or None when it runs in this process."""
    if under_launcher():
        return None
    if gpus == 0 and not hostfile:
        try:
            import torch

            gpus = torch.cuda.device_count()
        except ImportError:
            gpus = 0
    if not hostfile and gpus <= 1:
        return None
    entry = [kind] + (["--config", config] if config else []) + passthrough
    if hostfile or deepspeed:
        cmd = ["deepspeed"]
        if hostfile:
            cmd += ["--hostfile", hostfile, "--num_gpus", str(hostfile_slots(hostfile))]
        else:
            cmd += ["--num_gpus", str(gpus)]
        return cmd + ["--module", "knowlm_local.train.entry", *entry]
    return ["torchrun", "--standalone", "--nproc_per_node", str(gpus), "-m", "knowlm_local.train.entry", *entry]


def run_launcher(cmd: list[str]) -> int:
    import subprocess

    if shutil.which(cmd[0]) is None:
        hint = "pip install deepspeed" if cmd[0] == "deepspeed" else "torchrun comes with torch: pip install torch"
        raise KnowLMError(f"{cmd[0]} is not installed, and this run needs it to use several GPUs", hint)
    return subprocess.call(cmd)


def shell(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
