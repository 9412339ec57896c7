"""What `knowlm-local finetune` and `pretrain` do: find the recipe, apply overrides, launch or train, report.

Recipes are YAML files; a bare name (``smollm2-ie-cpu``) is looked up among
the recipes that ship with the package (``recipes/finetune``,
``recipes/pretrain``), so a user can run one without a checkout.
"""

from __future__ import annotations

from pathlib import Path

from knowlm_local.errors import KnowLMError

KINDS = ("finetune", "pretrain")


def recipes_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files("knowlm_local.recipes")))


def find_recipe(name: str, kind: str) -> Path:
    """A recipe path from a path or a shipped recipe's name; an error listing the shipped ones otherwise."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise KnowLMError(f"{name} is a folder, not a recipe", "pass a .yaml recipe file")
    stem = Path(name).name.removesuffix(".yaml").removesuffix(".yml")
    for candidate in (recipes_dir() / kind / f"{stem}.yaml", *recipes_dir().glob(f"*/{stem}.yaml")):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in (recipes_dir() / kind).glob("*.yaml"))
    raise KnowLMError(f"no such recipe: {name}", f"shipped {kind} recipes: {', '.join(shipped)}")


def _quiet_libraries() -> None:
    """No deprecation chatter from transformers/peft and no DeepSpeed accelerator banner on a CPU-only machine."""
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*save_embedding_layers.*")
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _log_callback(say):
    from transformers import TrainerCallback

    class Say(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or not state.is_world_process_zero:
                return
            if "loss" in logs:
                total = state.max_steps or "?"
                say(f"step {state.global_step}/{total}  loss {float(logs['loss']):.4f}  "
                    f"lr {float(logs.get('learning_rate', 0)):.2e}  epoch {float(logs.get('epoch', 0)):.2f}")
            elif "eval_loss" in logs:
                say(f"step {state.global_step}  eval loss {float(logs['eval_loss']):.4f}")

    return Say()


def run(kind: str, config: str | None, overrides: dict[str, str], resume: bool = False, force: bool = False,
        print_command: bool = False, say=None, passthrough: list[str] | None = None):
    """Train ``kind`` from a recipe (or only print the launcher command); returns the TrainResult or None."""
    from knowlm_local.train.config import FinetuneConfig, PretrainConfig, load_config
    from knowlm_local.train.launch import launch_command, run_launcher, shell

    if kind not in KINDS:
        raise KnowLMError(f"unknown training kind {kind!r}", "use finetune or pretrain")
    say = say or print
    recipe = find_recipe(config, kind) if config else None
    cfg = load_config(FinetuneConfig if kind == "finetune" else PretrainConfig, str(recipe) if recipe else None,
                      overrides)
    flags = (["--resume"] if resume else []) + (["--force"] if force else [])
    cmd = launch_command(kind, str(recipe) if recipe else None, (passthrough or []) + flags, cfg.gpus, cfg.hostfile,
                         cfg.deepspeed)
    if print_command:
        if cmd is None:
            cmd = ["knowlm-local", kind] + (["--config", str(recipe)] if recipe else []) + (passthrough or []) + flags
        say(shell(cmd))
        return None
    if cmd is not None:
        say(f"launching: {shell(cmd)}")
        code = run_launcher(cmd)
        if code:
            raise KnowLMError(f"the launched run failed (exit code {code})", "see the log above")
        return None
    _quiet_libraries()
    from knowlm_local.train.pretrain import pretrain
    from knowlm_local.train.sft import finetune

    train = finetune if kind == "finetune" else pretrain
    result = train(cfg, resume=resume, force=force, say=say, callbacks=[_log_callback(say)])
    first, last = (result.losses[0][1], result.losses[-1][1]) if result.losses else (None, None)
    tps = result.tokens / result.seconds if result.seconds else 0.0
    say(f"done: {result.steps} steps in {result.seconds:.0f} s ({tps:,.0f} tokens/s)"
        + (f", loss {first:.4f} -> {last:.4f}" if first is not None else "") + f"; saved in {result.output_dir}")
    if kind == "finetune" and result.adapter:
        say(f"next: knowlm-local convert {result.output_dir} --adapter-only -o adapter.gguf   (a GGUF LoRA adapter)")
        say(f"  or: knowlm-local convert {result.output_dir} -q q4_k_m   (merged into its base, then quantized)")
    elif kind == "finetune" or kind == "pretrain":
        say(f"next: knowlm-local convert {result.output_dir} -q q4_k_m")
    return result
