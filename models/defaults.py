"""Default model locations and choices, importable without diffusers (the entry scripts' parsers need them)."""

__all__ = ["DEFAULT_DIT", "DEFAULT_DIT_VAE", "DEFAULT_SD", "DIGITS_MODEL", "GUIDANCE_RULES"]

DEFAULT_DIT = "facebook/DiT-XL-2-256"
# The VAE the DiT authors sample with (their sample.py default); used when the model brings none.
DEFAULT_DIT_VAE = "stabilityai/sd-vae-ft-ema"
# The id diffusers' own documentation uses since runwayml/stable-diffusion-v1-5 was withdrawn.
DEFAULT_SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"
GUIDANCE_RULES = ("all", "original")
# --model_path digits: the trained pixel-space DiT shipped in models/digits (training/train_digits.py).
DIGITS_MODEL = "digits"
