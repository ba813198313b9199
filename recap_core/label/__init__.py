"""Advantage labelling with the value model (Stage 5)."""
