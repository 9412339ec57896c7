"""What a launcher runs in each process: ``python -m knowlm_local.train.entry finetune --config X [...]``.

The launcher (torchrun / deepspeed) has set WORLD_SIZE and LOCAL_RANK, so
the run goes straight to the trainer; errors are printed like the CLI's.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from knowlm_local.cli import report
    from knowlm_local.errors import KnowLMError
    from knowlm_local.train.run import run

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] not in ("finetune", "pretrain"):
            raise KnowLMError("the first argument must be finetune or pretrain", "this module is started by a launcher")
        kind, rest = argv[0], argv[1:]
        config = None
        flags = {"--resume": False, "--force": False}
        keep: list[str] = []
        i = 0
        while i < len(rest):
            if rest[i] == "--config" and i + 1 < len(rest):
                config = rest[i + 1]
                i += 2
                continue
            if rest[i] in flags:
                flags[rest[i]] = True
            elif rest[i].startswith("--local_rank") or rest[i].startswith("--local-rank"):
                i += 1 if "=" in rest[i] else 2  # deepspeed's launcher adds it; the env var says the same
                continue
            else:
                keep.append(rest[i])
            i += 1
        from knowlm_local.train.config import parse_extra_args

        run(kind, config, parse_extra_args(keep), resume=flags["--resume"], force=flags["--force"])
    except KnowLMError as exc:
        report(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
