"""Train the ``digits`` model: a small class-conditional pixel-space DiT on scikit-learn's digits.

    python -m training.train_digits                       # ~25 min on a CPU core, writes models/digits
    python -m training.train_digits --steps 200 --output_dir /tmp/digits   # a quick try

Data: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 grey 8x8
images, 10 classes, shipped inside the package, no download), upsampled bilinearly to 16x16 and
scaled to [-1, 1]. Model: ``diffusers.DiTTransformer2DModel`` on 1-channel 16x16 pixels (patch 4,
so 16 tokens), epsilon prediction, 10 classes plus the null class 10 that DiT's label embedding
trains by dropping 10 % of the labels (classifier-free guidance). Schedule: DiT's DDPM training
schedule (1000 steps, linear betas 1e-4 .. 0.02). AdamW with a short warm-up; the saved weights are
an exponential moving average. Everything random comes from ``--seed``.

The output is an ordinary diffusers ``DiTPipeline`` directory without a VAE (``model_index.json``
lists ``"vae": [null, null]``: a pixel-space model), plus ``loss.csv`` (the loss curve),
``samples.png`` (one row per class, sequential DDIM-50 with guidance 3, drawn through the same
loading code as every other model) and a ``README.md`` model card.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiTPipeline, DiTTransformer2DModel

from paratAA.pipelines.defaults import DIT_SCHEDULER_CONFIG

IMAGE_SIZE = 16
NUM_CLASSES = 10
MODEL_CONFIG = dict(num_attention_heads=3, attention_head_dim=32, in_channels=1, out_channels=1, num_layers=6,
                    sample_size=IMAGE_SIZE, patch_size=4, num_embeds_ada_norm=NUM_CLASSES)
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "models" / "digits"


def load_digit_images(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as float32 ``(1797, 1, size, size)`` in [-1, 1] and int64 labels.

    The 8x8 images hold integers 0..16; they are scaled to [-1, 1] and upsampled bilinearly.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("training needs scikit-learn: pip install -e '.[train]'") from None
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return images, torch.tensor(digits.target, dtype=torch.long)


def learning_rate(step: int, peak: float, warmup: int) -> float:
    return peak * min(1.0, (step + 1) / warmup)


def train(output_dir: Path, steps: int, batch_size: int, lr: float, ema_decay: float, seed: int,
          log_every: int) -> dict:
    """Train and save the model; return the facts the model card reports."""
    torch.manual_seed(seed)  # weight init and DiT's label dropout use the global generator
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digit_images()
    model = DiTTransformer2DModel(**MODEL_CONFIG)
    ema = DiTTransformer2DModel(**MODEL_CONFIG)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    model.train()
    scheduler = DDPMScheduler(**DIT_SCHEDULER_CONFIG)
    alphas_cumprod = scheduler.alphas_cumprod
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    output_dir.mkdir(parents=True, exist_ok=True)

    log = []
    running = None
    start = time.perf_counter()
    for step in range(steps):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        x0, y = images[index], labels[index]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        loss = F.mse_loss(model(xt, timestep=t, class_labels=y).sample, noise)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, lr, warmup=200)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(ema_decay, (1 + step) / (10 + step))  # short warm-up of the average
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - decay)
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            log.append({"step": step + 1, "loss": value, "smoothed_loss": running, "seconds": elapsed})
            print(f"step {step + 1:6d}  loss {value:.4f}  smoothed {running:.4f}  {elapsed:7.0f} s", flush=True)

    with open(output_dir / "loss.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)
    pipe = DiTPipeline(transformer=ema, vae=None, scheduler=scheduler)
    pipe.save_pretrained(output_dir, safe_serialization=True)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay, "seed": seed,
            "final_smoothed_loss": running, "train_seconds": time.perf_counter() - start,
            "parameters": sum(p.numel() for p in ema.parameters()), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def sample_grid(model_dir: Path, per_class: int = 8, timesteps: int = 50, cfg_scale: float = 3.0, seed: int = 0):
    """Sequential DDIM samples of every class, loaded like any model directory; rows = classes."""
    from paratAA import sequential
    from paratAA.cli.images import contact_sheet
    from paratAA.cli.models import load_dit
    from paratAA.pipelines.runner import class_conditioning

    runner = load_dit(str(model_dir), device="cpu")
    schedule = runner.make_schedule(timesteps, 0.0)
    labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
    noise = runner.sample_noise(seed, len(labels), timesteps)
    samples = sequential(runner.eps_fn(class_conditioning(labels, cfg_scale)), schedule, noise)[:, 0]
    images = runner.decode(samples)
    return contact_sheet([images[c * per_class:(c + 1) * per_class] for c in range(NUM_CLASSES)], min_size=48)


def write_card(output_dir: Path, facts: dict) -> None:
    card = f"""# digits: a small class-conditional pixel-space DiT

Trained by this repository's `training/train_digits.py` so that examples, tests and benchmarks run
on a network that learned something, offline, in seconds on a CPU.

- **Data**: scikit-learn's bundled handwritten digits (`sklearn.datasets.load_digits`: 1,797 grey
  8x8 images, classes 0-9), upsampled bilinearly to 16x16, scaled to [-1, 1]. No download.
- **Model**: `diffusers.DiTTransformer2DModel`, 1 x 16 x 16 pixels, patch 4 (16 tokens), width 96,
  6 layers, 3 heads, {facts['parameters']:,} parameters; epsilon prediction (no learned sigma);
  classes 0-9 and the null class 10 (labels dropped with probability 0.1 in training), so
  classifier-free guidance works. No VAE: the sample *is* the image (`x / 2 + 0.5`).
- **Schedule**: DDPM, 1000 training steps, linear betas 1e-4 to 0.02 (DiT's); sampled with DDIM
  like the DiT models (`linspace` timesteps, final alpha 1).
- **Training**: {facts['steps']:,} steps of batch {facts['batch_size']}, AdamW lr {facts['lr']} (200 warm-up steps),
  gradient clipping 1.0, EMA {facts['ema_decay']} (the saved weights), seed {facts['seed']}; final smoothed
  loss {facts['final_smoothed_loss']:.4f}; {facts['train_seconds'] / 60:.1f} minutes on {facts['threads']} CPU thread(s)
  (torch {facts['torch']}; about 0.33 s per step on a free core). Loss curve: `loss.csv`.
- **Command**: `{facts['command']}`
- **Use**: `python parallel_dit.py --model_path digits --class_labels 0 1 2 3 4 5 6 7 8 9 --timesteps 50`
  or, in Python, `paratAA.cli.models.load_dit("digits")` (a `PipelineRunner`), or
  `DiTPipeline.from_pretrained("models/digits", vae=None)` with `paratAA.pipelines.prepare`.

`samples.png`: sequential DDIM, 50 steps, guidance 3, seed 0, one row per class 0-9.

![samples](samples.png)
"""
    (output_dir / "README.md").write_text(card)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--output_dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier than 2 on a shared 2-core machine)")
    parser.add_argument("--card_only", action="store_true",
                        help="do not train: redraw samples.png and README.md from an existing output_dir")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    facts_file = args.output_dir / "training.json"
    if args.card_only:
        facts = json.loads(facts_file.read_text())
    else:
        command = "python -m training.train_digits " + " ".join(argv if argv is not None else sys.argv[1:])
        facts = train(args.output_dir, args.steps, args.batch_size, args.lr, args.ema_decay, args.seed,
                      args.log_every)
        facts["command"] = command.strip()
        facts_file.write_text(json.dumps(facts, indent=2) + "\n")
    sample_grid(args.output_dir).save(args.output_dir / "samples.png")
    write_card(args.output_dir, facts)
    print(f"saved {args.output_dir}")


if __name__ == "__main__":
    main()
