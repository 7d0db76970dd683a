"""Default model locations and DiT's sampling settings, importable without torch or diffusers (the entry
scripts' parsers need them before anything heavy loads)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_DIT", "DEFAULT_DIT_VAE", "DEFAULT_SD", "DIT_DDIM", "DIT_SCHEDULER_CONFIG", "GUIDANCE_RULES",
           "MODEL_DTYPES", "SAMPLERS", "TINY_KINDS", "TINY_MODEL", "TINY_PREFIX", "TRAINED_MODELS", "is_tiny", "tiny_kind",
           "trained_model_dir"]

DEFAULT_DIT = "facebook/DiT-XL-2-256"
# The VAE the DiT authors sample with (their sample.py default); used when the model brings none.
DEFAULT_DIT_VAE = "stabilityai/sd-vae-ft-ema"
# The id diffusers' own documentation uses since runwayml/stable-diffusion-v1-5 was withdrawn.
DEFAULT_SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# DiT's classifier-free guidance rules: every latent channel (diffusers' DiTPipeline) or the first 3 (the
# original DiT code's forward_with_cfg); see paratAA.pipelines.families.DiTAdapter.
GUIDANCE_RULES = ("all", "original")
# DiT's training schedule (the original repository's and diffusers' conversion script's): linear betas.
DIT_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                            prediction_type="epsilon", clip_sample=False)
# DiT's respaced DDIM (the original DiT code's sampler): linspace(0, 999, T).round() timesteps, alpha_bar = 1 after
# the last step, no clipping; applied over the pipeline's own scheduler configuration.
DIT_DDIM = dict(timestep_spacing="linspace", set_alpha_to_one=True, steps_offset=0, clip_sample=False)
# The precisions a pipeline loads and runs in (load_pipeline's dtype, the scripts' --dtype); the solver's state is float64.
MODEL_DTYPES = ("float32", "float16", "bfloat16")
# What ``PipelineRunner(sampler=...)`` and the scripts' --sampler build over a pipeline's scheduler configuration.
SAMPLERS = ("ddim", "dpm++2m", "unipc")
# --model_path <name>: the small models trained by this repository's training/ scripts, kept in its models/<name>:
# digits (class-conditional 16x16 handwritten digits, training/train_digits.py) and patches (unconditional 32x32 RGB
# photo crops whose samplers keep improving up to 50+ steps, training/train_patches.py).
TRAINED_MODELS = ("digits", "patches")


def trained_model_dir(name: str) -> Path:
    """The repository's ``models/<name>`` pipeline directory (present in a checkout, not in a wheel)."""
    return Path(__file__).resolve().parents[2] / "models" / name


# --model_path tiny-<kind>: tiny random-weight pipelines built offline (paratAA.pipelines.tiny); plain
# "tiny" is each entry script's own (tiny-dit for parallel_dit.py, tiny-sd for the others).
TINY_MODEL = "tiny"
TINY_PREFIX = TINY_MODEL + "-"
TINY_KINDS = ("dit", "sd", "sdxl", "sd3", "flux")
# Video and newer image families (paratAA.pipelines.tiny_video, tiny_image2): tiny_pipeline and tiny-<kind> only.
TINY_KINDS += ("wan", "wan22", "ltx", "hunyuan", "cogvideox", "qwenimage", "sana", "pixart", "chroma",
               "flux-kontext")


def tiny_kind(model_path: str) -> str | None:
    """The tiny pipeline ``model_path`` names (``"tiny-sd3"`` -> ``"sd3"``), else None."""
    kind = model_path.removeprefix(TINY_PREFIX) if model_path.startswith(TINY_PREFIX) else None
    return kind if kind in TINY_KINDS else None


def is_tiny(model_path: str) -> bool:
    """``model_path`` names one of the tiny random-weight pipelines (``tiny`` or ``tiny-<kind>``)."""
    return model_path == TINY_MODEL or tiny_kind(model_path) is not None
