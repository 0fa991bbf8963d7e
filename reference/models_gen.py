"""Generative and sequence models (the transformer LM, the GAN): see reference.models."""

MODELS: dict = {}
