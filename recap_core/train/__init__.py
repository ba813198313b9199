"""One training loop for sft, finetune and value training."""
