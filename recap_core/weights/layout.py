"""Where published weights keep their parts: the VLM bundle's layout (value model backbones and
tokenizer), read by the loaders in `weights/` and checked by `recap doctor`."""

from __future__ import annotations

from pathlib import Path

BUNDLE_GEMMA = Path("gemma-3-270m") / "step_00020000"
BUNDLE_SIGLIP = Path("siglip2-so400m-patch14-224-jax")
BUNDLE_TOKENIZER = Path("tokenizer.model")
BUNDLE_HINT = ("download it with: hf download ybpy/vlm_ckpt --local-dir ~/Downloads/vlm_ckpt, or set "
               "RECAP_VLM_BUNDLE_DIR (or OPENPI_VLM_CKPT_DIR) to where it is")
