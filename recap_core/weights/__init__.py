"""Loading openpi checkpoints and the VLM bundle; converting checkpoints."""
