"""Training: pretraining data, supervised fine-tuning (LoRA / QLoRA / full), IE instruction data, launchers.

The trainers are transformers' ``Trainer`` (with DeepSpeed where asked) driven
by typed configs read from the YAML recipes in ``recipes/``; nothing here
re-implements distributed training. Heavy imports (torch, transformers, peft)
happen inside the functions that need them.
"""
