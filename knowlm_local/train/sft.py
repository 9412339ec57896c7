"""`knowlm-local finetune`: supervised fine-tuning with transformers' Trainer (LoRA, QLoRA or full).

The loop, the optimizer, mixed precision, DeepSpeed and checkpointing are
transformers' own; this module decides what goes in (the model, the adapter,
the examples from :mod:`knowlm_local.train.sft_data`) and checks what comes
out. What it adds on purpose:

* the loss is computed only where a label exists: the output layer (the
  vocabulary projection) runs on the answer positions only, through the
  models' ``logits_to_keep``, which on short answers after long IE prompts
  saves most of its cost;
* a resumed run restores model, optimizer, scheduler, RNG and data position
  (Trainer checkpoints), and an existing run is never overwritten silently;
* after saving, a LoRA adapter is checked to be non-empty (every ``lora_B``
  above zero: empty adapters saved under ZeRO-3 or a changed PEFT are the
  most reported failure of fine-tuning tools) and records its base model and
  revision, so ``convert`` and ``merge`` find the right base;
* QLoRA is refused without CUDA and together with ZeRO-3.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from knowlm_local.errors import KnowLMError
from knowlm_local.train.config import FinetuneConfig, to_dict

RUN_FILE = "knowlm_train.json"


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss) as logged
    seconds: float = 0.0
    tokens: int = 0  # tokens seen by the model (padding excluded)
    adapter: bool = False


def checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)


def complete_checkpoint(ckpt: Path) -> bool:
    """Trainer writes trainer_state.json last: a checkpoint without it (or its weights) was cut short by a kill."""
    return ((ckpt / "trainer_state.json").is_file() and (ckpt / "optimizer.pt").is_file()
            and any(ckpt.glob("*.safetensors")))


def resume_point(folder: Path, say=None) -> Path:
    """The last complete checkpoint; later, incomplete ones are set aside (renamed), never trusted."""
    found = None
    for ckpt in reversed(checkpoints(folder)):
        if complete_checkpoint(ckpt):
            found = ckpt
            break
        aside = ckpt.with_name(ckpt.name.replace("checkpoint-", "incomplete-checkpoint-"))
        shutil.rmtree(aside, ignore_errors=True)
        ckpt.rename(aside)
        if say:
            say(f"{ckpt.name} was cut short (no trainer_state.json); set aside as {aside.name}")
    if found is None:
        raise KnowLMError(f"nothing to resume in {folder}: no complete checkpoint-* folder",
                          "run with --force to start over")
    return found


def train_and_time(trainer, out: Path, continuing: bool, say=None) -> tuple[Any, float, list[tuple[int, float]]]:
    """Run ``trainer`` (from the last complete checkpoint when continuing): its state, seconds and logged losses."""
    from knowlm_local.train.heap import kept_heap

    t0 = time.perf_counter()
    start = resume_point(out, say) if continuing else None
    with kept_heap(enabled=not _cuda()):  # CPU steps reuse their freed buffers instead of page-faulting them in
        state = trainer.train(resume_from_checkpoint=str(start) if start else None)
    seconds = time.perf_counter() - t0
    return state, seconds, [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]


def prepare_output(folder: Path, resume: bool, force: bool) -> bool:
    """Check the output folder; True when training continues from its last checkpoint."""
    if resume and force:
        raise KnowLMError("--resume and --force contradict each other", "keep one: continue the run or start over")
    if folder.exists() and not folder.is_dir():
        raise KnowLMError(f"output_dir {folder} is a file", "point output_dir at a folder")
    held = folder.is_dir() and (checkpoints(folder) or (folder / RUN_FILE).exists())
    if resume:
        if not checkpoints(folder):
            raise KnowLMError(f"nothing to resume in {folder}: it has no checkpoint-* folder",
                              "run without --resume to start the run")
        return True
    if held:
        if not force:
            raise KnowLMError(f"{folder} already holds a training run",
                              "pass --resume to continue it, or --force to start over (its checkpoints are deleted)")
        shutil.rmtree(folder)
    return False


def _deepspeed_stage(path: str) -> int:
    if not path:
        return 0
    from knowlm_local.jsonio import read_json

    cfg = read_json(Path(path), what="DeepSpeed config", hint="pass one of recipes/deepspeed/*.json")
    stage = (cfg.get("zero_optimization") or {}).get("stage", 0)
    return int(stage) if isinstance(stage, int) else 0


def check_runtime(cfg) -> None:
    """Refuse combinations that cannot work here, before anything heavy is loaded."""
    import torch

    if getattr(cfg, "mode", "full") == "qlora":
        if _deepspeed_stage(cfg.deepspeed) == 3:
            raise KnowLMError("QLoRA cannot be combined with DeepSpeed ZeRO-3 (4-bit weights cannot be sharded)",
                              "use recipes/deepspeed/zero2.json, or mode: lora with ZeRO-3")
        if not torch.cuda.is_available():
            raise KnowLMError("QLoRA needs a CUDA GPU (bitsandbytes 4-bit); none is available here",
                              "use mode: lora on the CPU, or run on a machine with an NVIDIA GPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise KnowLMError("QLoRA needs bitsandbytes", "pip install bitsandbytes") from None
    if cfg.deepspeed and not Path(cfg.deepspeed).is_file():
        raise KnowLMError(f"no such DeepSpeed config: {cfg.deepspeed}", "pass one of recipes/deepspeed/*.json")
    if cfg.precision in ("bf16", "fp16") and not torch.cuda.is_available():
        raise KnowLMError(f"precision {cfg.precision} needs a GPU; this run is on the CPU",
                          "set precision: fp32 (or auto) for CPU runs")


def _precision(cfg_precision: str) -> str:
    import torch

    if cfg_precision != "auto":
        return cfg_precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def load_model(base_folder: Path, cfg: FinetuneConfig, precision: str):
    """The model to train: full weights, or the base with a LoRA adapter (4-bit base for QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    kwargs: dict[str, Any] = {"dtype": dtype if cfg.mode != "full" or precision == "fp32" else torch.float32}
    if cfg.mode == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=cfg.quant.bits == 4, load_in_8bit=cfg.quant.bits == 8,
            bnb_4bit_quant_type=cfg.quant.quant_type, bnb_4bit_use_double_quant=cfg.quant.double_quant,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    if cfg.data.packing and cfg.data.packed_attention == "varlen":
        from knowlm_local.train import varlen

        kwargs["attn_implementation"] = varlen.register()
    try:
        model = AutoModelForCausalLM.from_pretrained(base_folder, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as exc:
        raise KnowLMError(f"transformers cannot load {base_folder}: {str(exc).splitlines()[0]}",
                          "check that the folder has config.json and safetensors weights") from exc
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.mode == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.mode == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in cfg.lora.target_modules if m not in names]
    if missing:
        raise KnowLMError(f"lora.target_modules {missing} are not modules of this model",
                          "Llama models have: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), use_rslora=cfg.lora.use_rslora,
                      bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def training_arguments(cfg, precision: str, has_dev: bool, overrides: dict | None = None):
    from transformers import TrainingArguments

    args: dict[str, Any] = dict(
        output_dir=cfg.output_dir, per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler,
        # transformers 5 takes a ratio of the total steps as a float in warmup_steps
        warmup_steps=cfg.warmup_ratio if cfg.warmup_ratio > 0 and not cfg.warmup_steps else cfg.warmup_steps,
        weight_decay=cfg.weight_decay, adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
        adam_epsilon=cfg.adam_epsilon, max_grad_norm=cfg.max_grad_norm, optim=cfg.optim,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=precision == "fp32" and not _cuda(),
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        save_strategy="steps", seed=cfg.seed, data_seed=cfg.seed, report_to=[], remove_unused_columns=False,
        dataloader_num_workers=0, deepspeed=cfg.deepspeed or None, disable_tqdm=True,
        eval_strategy="steps" if has_dev and getattr(cfg, "eval_steps", 0) else "no",
        eval_steps=getattr(cfg, "eval_steps", 0) or None, gradient_checkpointing=False,
    )
    args.update(overrides or {})
    return TrainingArguments(**args)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _unwrap(model):
    """The transformers model inside DDP / DeepSpeed / PEFT wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_parts(model):
    """(final norm module, output projection) of a decoder-only model, or None when they cannot be found."""
    base = _unwrap(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    norm = getattr(decoder, "norm", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    return (norm, head) if norm is not None and head is not None else None


def make_trainer_class():
    """transformers.Trainer with the loss computed on labelled positions only (see the module docstring).

    The final hidden states are taken from the model's last norm (a forward
    hook) while the model itself projects a single position; the output
    layer then runs on exactly the (row, position) pairs that have a label.
    A long IE prompt with a short answer, or a packed row, costs the
    vocabulary projection of its answer tokens only.
    """
    import torch.nn.functional as F
    from transformers import Trainer

    class KnowLMTrainer(Trainer):
        tokens_seen = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            self.tokens_seen += int(inputs.pop("n_tokens", 0))
            targets = labels[:, 1:]
            rows, cols = (targets != -100).nonzero(as_tuple=True)  # position t predicts token t + 1
            parts = _head_parts(model)
            if parts is None:  # unknown architecture: the union of labelled positions over the batch
                keep = (targets != -100).any(dim=0).nonzero(as_tuple=True)[0]
                outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
                logits = outputs.logits[:, :len(keep)].float().reshape(-1, outputs.logits.size(-1))
                gold = targets[:, keep].reshape(-1)
            else:
                norm, head = parts
                seen = {}
                hook = norm.register_forward_hook(lambda _m, _i, out: seen.__setitem__("h", out))
                try:
                    outputs = model(**inputs, logits_to_keep=1, use_cache=False)
                finally:
                    hook.remove()
                logits = head(seen["h"][rows, cols]).float()
                gold = targets[rows, cols]
            total = F.cross_entropy(logits, gold, ignore_index=-100, reduction="sum")
            count = num_items_in_batch if num_items_in_batch is not None else max(1, len(rows))
            loss = total / count
            return (loss, outputs) if return_outputs else loss

    return KnowLMTrainer


class _Dataset:
    """Rows as a torch dataset (a plain sequence of dicts is all Trainer needs)."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def finetune(cfg: FinetuneConfig, resume: bool = False, force: bool = False, say=print,
             trainer_overrides: dict | None = None, callbacks: list | None = None) -> TrainResult:
    """Train ``cfg`` to completion (or resume it); the adapter or full weights end up in ``cfg.output_dir``."""
    from knowlm_local.train.base import resolve_base
    from knowlm_local.train.sft_data import Collator, choose_pad, load_examples, pack, template_for, unpacked

    if not cfg.model:
        raise KnowLMError("the recipe names no model", "set model: (a zoo name, hub repo id or HF folder)")
    if not cfg.output_dir:
        raise KnowLMError("the recipe names no output_dir", "set output_dir: ./runs/NAME, or pass --output-dir")
    out = Path(cfg.output_dir).expanduser()
    from knowlm_local.jsonio import iter_jsonl

    for name in cfg.data.train + cfg.data.dev:
        if not Path(name).is_file():
            raise KnowLMError(f"no such training data file: {name}", "fix data.train / data.dev in the recipe")
        next(iter_jsonl(Path(name), "training data", skip_bad=True), None)  # a binary file: say so before any load
    continuing = prepare_output(out, resume, force)
    check_runtime(cfg)
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = resolve_base(cfg.model, cfg.revision or None)
    from knowlm_local.train.base import load_tokenizer
    from knowlm_local.zoo import find_card

    tokenizer = load_tokenizer(base.folder)
    pad_id = choose_pad(tokenizer)
    template = template_for(cfg.data.template, tokenizer, find_card(base.name) if base.name else None)
    examples, report = load_examples(cfg.data.train, tokenizer, template, cfg.data.max_len, cfg.data.response_only,
                                     say=say)
    rows = pack(examples, cfg.data.max_len) if cfg.data.packing else unpacked(examples)
    dev_rows = None
    if cfg.data.dev:
        dev_examples, _ = load_examples(cfg.data.dev, tokenizer, template, cfg.data.max_len, cfg.data.response_only)
        dev_rows = unpacked(dev_examples)
    precision = _precision(cfg.precision)
    from transformers import set_seed

    set_seed(cfg.seed)  # the adapter's random init too, so the same recipe gives the same run
    model = load_model(base.folder, cfg, precision)
    if hasattr(model, "print_trainable_parameters") and say:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        say(f"{cfg.mode}: {trainable:,} trainable parameters of {sum(p.numel() for p in model.parameters()):,}")
    out.mkdir(parents=True, exist_ok=True)
    trainer = make_trainer_class()(
        model=model, args=training_arguments(cfg, precision, dev_rows is not None, trainer_overrides),
        train_dataset=_Dataset(rows), eval_dataset=_Dataset(dev_rows) if dev_rows else None,
        data_collator=Collator(pad_id),
    )
    quiet(trainer, callbacks)
    state, seconds, losses = train_and_time(trainer, out, continuing, say)
    adapter = cfg.mode != "full"
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out))
        if adapter:
            write_adapter_base(out, base)
            check_adapter(out)
        record = {"config": to_dict(cfg), "base": {"name": base.name, "folder": str(base.folder), "repo": base.repo,
                                                   "revision": base.revision},
                  "steps": trainer.state.global_step, "train_loss": state.training_loss, "seconds": seconds,
                  "data": {"examples": report.examples, "tokens": report.tokens, "label_tokens": report.label_tokens,
                           "truncated": report.truncated, "skipped": dict(report.skipped)},
                  "template": template.name, "losses": losses}
        from knowlm_local.io_utils import atomic_write_text

        atomic_write_text(out / RUN_FILE, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    return TrainResult(out, trainer.state.global_step, losses, seconds, trainer.tokens_seen, adapter)


def quiet(trainer, callbacks: list | None) -> None:
    """Trainer's own console printer out, ours in (one line per logged step)."""
    from transformers.trainer_callback import PrinterCallback

    if callbacks is not None:
        trainer.remove_callback(PrinterCallback)
        for cb in callbacks:
            trainer.add_callback(cb)


def write_adapter_base(folder: Path, base) -> None:
    """Make ``adapter_config.json`` name the base as convert/merge resolve it, with its revision."""
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = base.name
    cfg["revision"] = base.revision
    path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def check_adapter(folder: Path) -> None:
    """Refuse an adapter whose lora_B factors are empty or all zero (nothing was learned, or nothing saved)."""
    from safetensors.numpy import load_file

    path = folder / "adapter_model.safetensors"
    if not path.is_file():
        raise KnowLMError(f"no adapter_model.safetensors was saved in {folder}", "check the training log above")
    tensors = load_file(str(path))
    b_factors = {k: v for k, v in tensors.items() if "lora_B" in k}
    if not b_factors:
        raise KnowLMError(f"the adapter in {folder} has no lora_B weights", "the adapter is empty: check PEFT's version")
    empty = [k for k, v in b_factors.items() if v.size == 0]
    if empty:
        raise KnowLMError(f"the adapter in {folder} saved {len(empty)} empty tensors (e.g. {empty[0]})",
                          "under ZeRO-3 set stage3_gather_16bit_weights_on_model_save: true (the shipped "
                          "recipes/deepspeed/zero3*.json do)")
    import numpy as np

    zero = [k for k, v in b_factors.items() if not np.any(v)]
    if len(zero) == len(b_factors):
        raise KnowLMError(f"every lora_B factor of the adapter in {folder} is zero: training changed nothing",
                          "train for more steps or with a higher learning_rate")
