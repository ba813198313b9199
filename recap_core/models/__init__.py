"""Flax NNX models: SigLIP, Gemma mixture, Gemma3, LoRA, the pi0.5/pi0.6 policy and the C51 value model."""
