"""Train the ``patches`` model: a small pixel-space DiT on 32x32 RGB crops of bundled sample photos.

    python -m training.train_patches                        # background run, resumable, writes models/patches
    python -m training.train_patches --steps 200 --checkpoint_dir /tmp/p --output_dir /tmp/p/model  # a quick try
    python -m training.train_patches --export_only          # export the latest checkpoint's EMA weights

Why: the ``digits`` model saturates after ~3 sequential solver steps, so parallel-sampling speed-ups
measured on it compare against a sampler nobody would use. Natural-image crops carry fine, sharp
detail, so a model of them keeps improving with more solver steps (see ``benchmarks/quality.py``).

Data: the RGB sample photos shipped inside the scikit-image wheel (``skimage.data``) and
scikit-learn's two sample images (``load_sample_images``); no download. Each photo is kept at full,
half and quarter resolution (area averaging); a training image is a random 32x32 crop of a random
(photo, resolution) pair, flipped horizontally with probability 1/2, scaled to [-1, 1].

Model: ``diffusers.DiTTransformer2DModel`` on 3 x 32 x 32 pixels (patch 4, 64 tokens), one class
(0; DiT's label dropout also trains its null class 1, which is the same distribution), epsilon
(default) or v prediction, DiT's DDPM training schedule (1000 steps, linear betas 1e-4 .. 0.02). AdamW with a
warm-up; the exported weights are an exponential moving average. Everything random comes from
``--seed`` and is checkpointed, so a resumed run continues the same random stream.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
IMAGE_SIZE = 32
DEFAULT_OUTPUT = REPO / "models" / "patches"
DEFAULT_CHECKPOINTS = REPO / "checkpoints" / "patches"
QUALITY_RESULT = REPO / "benchmarks" / "results" / "quality_patches.json"  # benchmarks/quality.py's, for the card
MODEL_CONFIG = dict(num_attention_heads=4, attention_head_dim=32, in_channels=3, out_channels=3, num_layers=6,
                    sample_size=IMAGE_SIZE, patch_size=4, num_embeds_ada_norm=1)
# DiT's training schedule (same values as paratAA.pipelines.defaults.DIT_SCHEDULER_CONFIG).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                        prediction_type="epsilon", clip_sample=False)
# skimage.data photos that are files inside the wheel (no pooch download); grey textures become RGB.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "retina", "hubble_deep_field",
                  "immunohistochemistry", "grass", "gravel", "brick")
LEVELS = (1, 2, 4)  # downscaling factors of the resolution pyramid


def load_photos() -> list[np.ndarray]:
    """The source photos as uint8 ``(H, W, 3)`` arrays, offline, in a fixed order."""
    try:
        from skimage import data
        from sklearn.datasets import load_sample_images
    except ImportError:
        raise SystemExit("the patches data needs scikit-image and scikit-learn: pip install -e '.[train]'") from None
    photos = []
    for name in SKIMAGE_PHOTOS:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if name == "retina":  # drop most of the black surround of the fundus photo
            image = image[250:1160, 250:1160]
        photos.append(np.ascontiguousarray(image[:, :, :3]))
    photos.extend(np.asarray(image) for image in load_sample_images().images)  # china.jpg, flower.jpg
    # stereo_motorcycle's left view is a file in the wheel too (motorcycle_left.png)
    photos.append(np.asarray(data.stereo_motorcycle()[0]))
    return photos


def _downscale(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average a float ``(3, H, W)`` image by an integer factor."""
    return image if factor == 1 else F.avg_pool2d(image.unsqueeze(0), factor).squeeze(0)


class CropSource:
    """Random 32x32 crops of the photo pyramid, as float32 ``(N, 3, 32, 32)`` in [-1, 1].

    Every (photo, resolution) pair is equally likely; then the crop position is uniform and the
    crop is flipped left-right with probability 1/2. All randomness comes from the given generator.
    """

    def __init__(self, size: int = IMAGE_SIZE, levels: tuple[int, ...] = LEVELS) -> None:
        self.size = size
        self.sources = []
        for photo in load_photos():
            image = torch.from_numpy(photo.copy()).permute(2, 0, 1).float() / 127.5 - 1.0
            for factor in levels:
                self.sources.append(_downscale(image, factor).contiguous())

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        which = torch.randint(0, len(self.sources), (count,), generator=generator).tolist()
        u = torch.rand(count, 2, generator=generator)
        flips = torch.rand(count, generator=generator) < 0.5
        crops = []
        for i, k in enumerate(which):
            source = self.sources[k]
            top = int(u[i, 0] * (source.shape[1] - self.size + 1))
            left = int(u[i, 1] * (source.shape[2] - self.size + 1))
            crop = source[:, top:top + self.size, left:left + self.size]
            crops.append(crop.flip(-1) if flips[i] else crop)
        return torch.stack(crops)


def real_crops(count: int, seed: int) -> torch.Tensor:
    """``count`` crops drawn with their own seed (benchmarks use seeds far from training's)."""
    return CropSource().sample(count, torch.Generator().manual_seed(seed))


def learning_rate(step: int, peak: float, warmup: int) -> float:
    return peak * min(1.0, (step + 1) / warmup)


def build_models():
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(**MODEL_CONFIG)
    ema = DiTTransformer2DModel(**MODEL_CONFIG)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    return model, ema


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically (a killed run never leaves a half-written checkpoint)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(args: argparse.Namespace) -> dict:
    """Train (resuming from ``checkpoint_dir/last.pt`` if present); return the model card's facts."""
    from diffusers import DDPMScheduler

    ckpt_dir: Path = args.checkpoint_dir
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "last.pt"
    torch.manual_seed(args.seed)  # weight init and DiT's label dropout use the global generator
    generator = torch.Generator().manual_seed(args.seed)
    model, ema = build_models()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    start_step, running, log, previous_seconds = 0, None, [], 0.0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        saved_type = state["args"].get("prediction_type", "epsilon")
        if saved_type != args.prediction_type:
            raise SystemExit(f"{ckpt_path} was trained with --prediction_type {saved_type}")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_step, running, log = state["step"], state["running"], state["log"]
        previous_seconds = state["seconds"]
        print(f"resumed from {ckpt_path} at step {start_step}", flush=True)
    model.train()
    data = CropSource()
    alphas_cumprod = DDPMScheduler(**SCHEDULER_CONFIG).alphas_cumprod
    class_labels = torch.zeros(args.batch_size, dtype=torch.long)
    start = time.perf_counter()
    last_save = start

    def elapsed() -> float:
        return previous_seconds + time.perf_counter() - start

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "ema": ema.state_dict(),
                                    "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                    "torch_rng": torch.get_rng_state(), "step": step, "running": running,
                                    "log": log, "seconds": elapsed(), "args": vars(args) | {
                                        "checkpoint_dir": str(ckpt_dir), "output_dir": str(args.output_dir)}})
        write_loss_csv(ckpt_dir / "loss.csv", log)

    for step in range(start_step, args.steps):
        x0 = data.sample(args.batch_size, generator)
        t = torch.randint(0, len(alphas_cumprod), (args.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        # epsilon: the noise; v_prediction: sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho)
        target = noise if args.prediction_type == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * x0
        loss = F.mse_loss(model(xt, timestep=t, class_labels=class_labels).sample, target)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.lr, warmup=args.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(args.ema_decay, (1 + step) / (10 + step))  # short warm-up of the average
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            log.append({"step": step + 1, "loss": value, "smoothed_loss": running, "seconds": round(elapsed(), 1)})
            print(f"step {step + 1:6d}  loss {value:.4f}  smoothed {running:.4f}  {elapsed():7.0f} s", flush=True)
        if time.perf_counter() - last_save > args.checkpoint_every or step + 1 == args.steps:
            checkpoint(step + 1)
            last_save = time.perf_counter()
        if args.keep_every and (step + 1) % args.keep_every == 0:
            torch.save({"ema": ema.state_dict(), "step": step + 1, "args": {"prediction_type": args.prediction_type}},
                       ckpt_dir / f"ema_{step + 1:06d}.pt")
    return {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
            "prediction_type": args.prediction_type,
            "ema_decay": args.ema_decay, "seed": args.seed, "final_smoothed_loss": running,
            "train_seconds": elapsed(), "parameters": sum(p.numel() for p in ema.parameters()),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def write_loss_csv(path: Path, log: list[dict]) -> None:
    if not log:
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)


def load_ema(checkpoint: Path):
    """The EMA transformer of a checkpoint (``last.pt`` or a kept ``ema_*.pt``)."""
    _, ema = build_models()
    ema.load_state_dict(torch.load(checkpoint, weights_only=False)["ema"])
    return ema


def _checkpoint_and_run(checkpoint: Path) -> tuple[dict, dict]:
    """A checkpoint's contents and its training run's record (arguments, loss log): the checkpoint's own
    (``last.pt``), else that of ``last.pt`` beside it (a kept ``ema_*.pt`` holds only the EMA weights,
    the step and the prediction type)."""
    state = torch.load(checkpoint, weights_only=False)
    last = checkpoint.parent / "last.pt"
    if "log" in state or not last.exists():
        return state, state
    return state, torch.load(last, weights_only=False)


def export(checkpoint: Path, output_dir: Path, prediction_type: str | None = None) -> dict:
    """Save a checkpoint's EMA weights as a diffusers ``DiTPipeline`` directory without a VAE; return the
    model card's facts.

    The scheduler's ``prediction_type`` is the one the checkpoint was trained with (else epsilon),
    unless ``prediction_type`` is given. The loss curve (``loss.csv``) is the run's log up to the
    checkpoint's step (``_checkpoint_and_run``). The facts: the training arguments, the exported step,
    the loss and training time of the log's last row, the size, and the command that reproduces it.
    """
    from diffusers import DDPMScheduler, DiTPipeline

    state, run = _checkpoint_and_run(checkpoint)
    arguments = {**run.get("args", {}), **state.get("args", {})}
    prediction_type = prediction_type or arguments.get("prediction_type", "epsilon")
    scheduler = DDPMScheduler(**(SCHEDULER_CONFIG | {"prediction_type": prediction_type}))
    transformer = load_ema(checkpoint)
    pipe = DiTPipeline(transformer=transformer, vae=None, scheduler=scheduler)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(output_dir, safe_serialization=True)
    step = state.get("step")
    log = [entry for entry in run.get("log") or [] if step is None or entry["step"] <= step]
    if not log:
        raise SystemExit(f"{checkpoint}: no loss log in it or in a last.pt beside it, so no model card")
    write_loss_csv(output_dir / "loss.csv", log)
    step = step if step is not None else log[-1]["step"]
    keys = ("batch_size", "lr", "warmup", "ema_decay", "seed")
    return {**{key: arguments[key] for key in keys}, "prediction_type": prediction_type, "steps": step,
            "final_smoothed_loss": float(log[-1]["smoothed_loss"]), "train_seconds": float(log[-1]["seconds"]),
            "log_last_step": int(log[-1]["step"]),  # a kept ema_*.pt may lie a little past the last logged checkpoint
            "parameters": sum(p.numel() for p in transformer.parameters()), "torch": torch.__version__,
            # seeded and resumable: this command reproduces the same weights however often it is interrupted
            "command": f"python -m training.train_patches --steps {step}"
                       + ("" if prediction_type == "epsilon" else " --prediction_type v_prediction")}


@torch.no_grad()
def sample_sheet(model_dir: Path, count: int = 32, steps: int = 50, seed: int = 0):
    """A picture: sequential DPM-Solver++ 2M samples (top rows) above as many real crops (bottom rows),
    eight per row, the model loaded like any model directory."""
    from paratAA import sequential
    from paratAA.cli.images import contact_sheet
    from paratAA.cli.models import load_dit
    from paratAA.pipelines.runner import class_conditioning

    runner = load_dit(str(model_dir), device="cpu", sampler="dpm++2m")
    schedule = runner.make_schedule(steps, 0.0)
    noise = runner.sample_noise(seed, count, steps)
    samples = sequential(runner.eps_fn(class_conditioning([0] * count, 1.0)), schedule, noise)[:, 0]
    real = real_crops(count, seed=2_000_003)  # benchmarks.quality's real reference seed
    pictures = runner.decode(samples) + runner.decode(real.double())
    return contact_sheet([pictures[i:i + 8] for i in range(0, len(pictures), 8)], min_size=32)


def pilot_rows(loss_csv: Path) -> list[tuple[int, float, float, float]]:
    """``(step, training hours, FD at 10, FD at 50 DPM++ 2M trailing steps)`` of the pilot evaluations of
    earlier checkpoints (``benchmarks/results/quality_patches_pilot_step*.json``), by step."""
    seconds = {int(row["step"]): float(row["seconds"]) for row in csv.DictReader(open(loss_csv))}
    rows = []
    for path in (REPO / "benchmarks" / "results").glob("quality_patches_pilot_step*.json"):
        step = int(path.stem.removeprefix("quality_patches_pilot_step").split("_")[0])
        fd = {r["steps"]: r["fd"] for r in json.loads(path.read_text())["rows"]
              if (r["sampler"], r["spacing"]) == ("dpm", "trailing")}
        if 10 in fd and 50 in fd and step in seconds:
            rows.append((step, seconds[step] / 3600, fd[10], fd[50]))
    return sorted(rows)


def write_card(output_dir: Path, facts: dict, quality: dict | None) -> None:
    """``README.md`` of the exported model: data, model, training, measured quality against steps."""
    hours = facts["train_seconds"] / 3600
    lines = [
        "# patches: an unconditional pixel-space DiT whose samplers need many steps",
        "",
        "Trained by this repository's `training/train_patches.py` so that parallel sampling is measured on a",
        "model whose sequential samplers keep improving up to 50 steps and more (the `digits` model is",
        "converged after about 3 DPM-Solver++ steps).",
        "",
        f"- **Data**: random 32x32 RGB crops, flipped left-right with probability 1/2, of {len(load_photos())} photos",
        "  inside the scikit-image wheel (astronaut, chelsea, coffee, rocket, retina, hubble_deep_field,",
        "  immunohistochemistry, grass, gravel, brick, the left view of stereo_motorcycle) and scikit-learn's two",
        "  (china, flower), each at full, half and quarter resolution; scaled to [-1, 1]. No download.",
        "- **Model**: `diffusers.DiTTransformer2DModel`, 3 x 32 x 32 pixels, patch 4 (64 tokens), width 128,",
        f"  6 layers, 4 heads, {facts['parameters']:,} parameters; {facts['prediction_type']} prediction; one class (0)",
        "  and DiT's null class: sample it unconditionally (guidance scale 1). No VAE: the sample *is* the image.",
        "- **Schedule**: DDPM, 1000 training steps, linear betas 1e-4 to 0.02 (DiT's).",
        f"- **Training**: {facts['steps']:,} steps of batch {facts['batch_size']}, AdamW lr {facts['lr']} "
        f"({facts['warmup']} warm-up steps),",
        f"  gradient clipping 1.0, EMA {facts['ema_decay']} (the saved weights), seed {facts['seed']}; smoothed loss",
        f"  {facts['final_smoothed_loss']:.4f} and {hours:.1f} hours of training at step {facts['log_last_step']:,} (the "
        "loss log's last row), on 1 CPU thread of a 2-core machine",
        "  shared with other jobs (about 0.85 s per step on a free core), in resumed runs. Loss curve: `loss.csv`.",
        f"- **Command**: `{facts['command']}` (resumable: rerun it to continue from the last checkpoint; "
        "`--export_only --export_checkpoint PATH` writes this directory from a checkpoint)",
        "- **Use**: `python parallel_dit.py --model_path patches --num_samples 8 --sampler dpm++2m --timesteps 50`",
        "  or, in Python, `paratAA.cli.models.load_dit(\"patches\")`, or",
        "  `DiTPipeline.from_pretrained(\"models/patches\", vae=None)` with",
        "  `paratAA.pipelines.sample(pipe, class_labels=[0] * 8, guidance_scale=1.0, ...)` (the pipeline's own call,",
        "  its VAE decode the identity) or `paratAA.pipelines.prepare`.",
    ]
    if quality:
        from benchmarks.quality import describe_regime, table

        lines += ["", f"## Quality against steps ({len(quality['seeds'])} noise seeds of {quality['count']} samples)", "",
                  "Fréchet distance to real crops in `benchmarks/quality.py`'s fixed feature space (whitened pixel and",
                  "high-pass PCA), mean +- std over the noise seeds; trailing timestep spacing. Real vs real at the same",
                  f"size: {quality['real_floor']['mean']:.2f} +- {quality['real_floor']['std']:.2f}. "
                  f"Seed-to-seed noise of one FD: {quality['seed_noise']:.3f}.", "",
                  table(quality), "", *[f"- {line}" for line in describe_regime(quality["regime"])], "",
                  "Commands: " + "".join(f"`{command}` and " for command in quality.get("merged_from", [])[:-1])
                  + "".join(f"`{command}` (in parallel), then " for command in quality.get("merged_from", [])[-1:])
                  + f"`{quality['command']}`."]
    pilots = pilot_rows(output_dir / "loss.csv")
    if pilots:
        lines += ["", "Earlier checkpoints of the same run (one noise seed each; `benchmarks/results/"
                  "quality_patches_pilot_step*.json`): DPM++ 2M (trailing) FD at 10 and 50 steps.", "",
                  "| training step | hours | FD, 10 steps | FD, 50 steps |", "|---:|---:|---:|---:|",
                  *[f"| {step:,} | {hours:.1f} | {fd10:.2f} | {fd50:.2f} |" for step, hours, fd10, fd50 in pilots]]
    lines += ["", "`samples.png`: top four rows, sequential DPM-Solver++ 2M with 50 steps, seed 0; bottom four rows,",
              "real crops.", "", "![samples](samples.png)", ""]
    (output_dir / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--checkpoint_dir", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--prediction_type", choices=["epsilon", "v_prediction"], default="epsilon",
                        help="the network's target (recorded in the exported scheduler config)")
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--checkpoint_every", type=float, default=300.0, help="seconds between checkpoints")
    parser.add_argument("--keep_every", type=int, default=1000,
                        help="also keep the EMA weights every this many steps (0: never), for evaluation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--export_only", action="store_true",
                        help="do not train: export checkpoint_dir/last.pt to output_dir")
    parser.add_argument("--no_export", action="store_true", help="train only; leave output_dir alone")
    parser.add_argument("--export_checkpoint", type=Path, default=None,
                        help="with --export_only: the checkpoint to export (default checkpoint_dir/last.pt; a kept "
                             "ema_*.pt for an earlier step)")
    parser.add_argument("--quality", type=Path, default=QUALITY_RESULT,
                        help="benchmarks/quality.py's result for the model card's quality table (skipped if missing)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.export_only:
        facts = train(args)
        print(f"trained to step {facts['steps']} in {facts['train_seconds'] / 3600:.1f} h, smoothed loss "
              f"{facts['final_smoothed_loss']:.4f}")
    if not args.no_export:
        checkpoint = args.export_checkpoint or args.checkpoint_dir / "last.pt"
        facts = export(checkpoint, args.output_dir)
        (args.output_dir / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
        sample_sheet(args.output_dir).save(args.output_dir / "samples.png")
        write_card(args.output_dir, facts, json.loads(args.quality.read_text()) if args.quality.exists() else None)
        print(f"saved {args.output_dir}")


if __name__ == "__main__":
    main()
