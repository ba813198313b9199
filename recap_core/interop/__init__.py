"""Runs to and from openpi checkpoints: `recap export openpi` and `recap import openpi`."""
