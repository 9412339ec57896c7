"""`knowlm-local pretrain`: continued pretraining on token stores (full parameters), with transformers' Trainer.

KnowLM-13B was trained this way (LLaMA-13B weights, 1024-token samples,
DeepSpeed ZeRO-3 with CPU offload across nodes). The data are stores written
by ``prepare-pretrain``; :class:`~knowlm_local.train.token_store.MixedDataset`
fixes an epoch's order from the seed, so resuming a run (any node count) is
Trainer's own checkpoint restore: model, optimizer, scheduler, RNG and the
number of batches to skip, with no reader state to lose.
"""

from __future__ import annotations

import json
from pathlib import Path

from knowlm_local.errors import KnowLMError
from knowlm_local.train.config import PretrainConfig, to_dict
from knowlm_local.train.sft import (
    RUN_FILE,
    TrainResult,
    _precision,
    make_trainer_class,
    prepare_output,
    quiet,
    train_and_time,
)


class _Samples:
    """Training rows from a mixture of stores: every token is a label (padding masked by the collator)."""

    def __init__(self, mixed) -> None:
        self.mixed = mixed

    def __len__(self) -> int:
        return len(self.mixed)

    def __getitem__(self, i: int) -> dict:
        ids = [int(t) for t in self.mixed[i]]
        return {"input_ids": ids, "labels": list(ids)}


def pretrain(cfg: PretrainConfig, resume: bool = False, force: bool = False, say=print,
             trainer_overrides: dict | None = None, callbacks: list | None = None) -> TrainResult:
    """Run ``cfg`` (or continue it from its last checkpoint); full weights end up in ``cfg.output_dir``."""
    from knowlm_local.train.base import load_tokenizer, resolve_base
    from knowlm_local.train.sft import check_runtime, training_arguments
    from knowlm_local.train.sft_data import Collator, choose_pad
    from knowlm_local.train.token_store import MixedDataset, TokenStore

    if not cfg.model or not cfg.output_dir or not cfg.data:
        raise KnowLMError("a pretraining recipe needs model, output_dir and data (token store folders)",
                          "write the stores with knowlm-local prepare-pretrain and list them under data:")
    stores = [TokenStore(Path(p)) for p in cfg.data]
    out = Path(cfg.output_dir).expanduser()
    continuing = prepare_output(out, resume, force)
    check_runtime(cfg)  # precision and DeepSpeed checks are the same as fine-tuning's
    import torch
    from transformers import AutoModelForCausalLM

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = resolve_base(cfg.model, cfg.revision or None)
    tokenizer = load_tokenizer(base.folder)
    vocab = stores[0].meta.get("vocab_size")
    if vocab and vocab > len(tokenizer):
        raise KnowLMError(f"the token stores were made with a {vocab}-token vocabulary, {base.name} has {len(tokenizer)}",
                          "prepare the stores with this model's tokenizer (--tokenizer)")
    mixed = MixedDataset(stores, cfg.weights or None, seed=cfg.seed)
    from transformers import set_seed

    set_seed(cfg.seed)
    precision = _precision(cfg.precision)
    dtype = torch.float32 if precision == "fp32" else {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32 if precision == "fp16" else dtype,
                                                 trust_remote_code=False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    say(f"pretraining {base.name}: {len(mixed):,} samples per epoch from {len(stores)} store(s), "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {precision}")
    args = training_arguments(cfg, precision, False, trainer_overrides)  # same keys as fine-tuning's
    trainer = make_trainer_class()(model=model, args=args, train_dataset=_Samples(mixed),
                                   data_collator=Collator(choose_pad(tokenizer)))
    quiet(trainer, callbacks)
    state, seconds, losses = train_and_time(trainer, out, continuing, say)
    if trainer.is_world_process_zero():
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out))
        from knowlm_local.io_utils import atomic_write_text

        atomic_write_text(out / RUN_FILE, json.dumps({
            "config": to_dict(cfg), "base": {"name": base.name, "folder": str(base.folder)},
            "steps": trainer.state.global_step, "train_loss": state.training_loss, "seconds": seconds,
            "losses": losses}, ensure_ascii=False, indent=2) + "\n")
    return TrainResult(out, trainer.state.global_step, losses, seconds, trainer.tokens_seen, False)
