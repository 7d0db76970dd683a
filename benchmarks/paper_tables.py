"""The paper's tables: per scenario, methods x (parallel iterations, wall-clock, image quality).

Scenarios (``--scenarios``): DiT: DDIM 25 / 50 / 100 and DDPM 100 (DDIM with eta 1); SD: DDIM 25 /
50 / 100. Rows (``--methods``, from the registry ``benchmarks.methods``): ``sequential``, ``FP``
(order 1, memory 1), ``FP+`` (order K, memory 1), ``ParaTAA-m2`` / ``ParaTAA-m3`` (order K, memory 2 / 3;
like FP and FP+ the paper's affine equations with new steps copied), ``ParaDiGMS``
(``paratAA.baselines.paradigms.solve_paradigms`` at ``--paradigms_tol``, diffusers' default 0.1) and
``default`` (this library's recommended method, ``paratAA.RECOMMENDED``, at ``--tol``). Every method
solves the same samples from the same noise (``paratAA.sample_noise``: sample k uses seed + k, so the
numbers do not depend on ``--batch_size``) with window ``--window`` (default T) and tolerances
``--tol`` (tol1 = tol2, the reference 1e-3); order K is ``--order`` (default: DiT T, SD 20, the
reference scripts' choices capped at the window).

Columns: ``steps``, parallel iterations per batch, averaged over batches (T for sequential; with
``--batch_size 1`` it is the per-image count the paper reports); ``time``, wall-clock seconds per
batch (solver and network; decoding and metrics excluded) and the speed-up over sequential; the
largest absolute latent difference from the sequential sample; and image quality of the decoded
samples: FID (against ``--reference_images``) and Inception Score for DiT, CLIP score for SD
(``benchmarks.metrics``). Quality numbers are labelled meaningless whenever a stand-in is used: the
tiny random diffusion model, ``--feature_extractor tiny-random``, ``--clip_model tiny`` or
``--reference_images random``.

Under ``accelerate launch --num_processes N`` each iteration's network calls are split across the N
processes (``paratAA.distributed``, the paper's multi-GPU scheme; every process runs the same
solver), and only process 0 decodes, scores, prints and writes.

Usage::

    # smoke run on the tiny models (meaningless numbers), < 1 minute on 2 CPU cores
    .venv/bin/python -m benchmarks.paper_tables --model dit --model_path tiny --feature_extractor tiny-random \\
        --reference_images random --num_samples 4 --out /tmp/paper_tables_dit.json
    .venv/bin/python -m benchmarks.paper_tables --model sd --model_path tiny --clip_model tiny --num_samples 4
    # the trained patches model: FID in its fixed PCA space against real crops (no IS: no classifier)
    .venv/bin/python -m benchmarks.paper_tables --model dit --model_path patches --feature_extractor patches \
        --reference_images patch-crops --scenarios ddim50,ddim100 --num_samples 200 --batch_size 20
    # paper scale: see benchmarks/RESULTS.md ("Paper tables")
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.methods import METHODS, Method, latent_metrics, run_outcome

REPO_ROOT = Path(__file__).resolve().parent.parent
ALL_METHODS = ("sequential", "FP", "FP+", "ParaTAA-m2", "ParaTAA-m3", "ParaDiGMS", "default")
DEFAULT_SCENARIOS = {"dit": "ddim25,ddim50,ddim100,ddpm100", "sd": "ddim25,ddim50,ddim100"}
DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red bicycle leaning against a brick wall",
    "a bowl of fresh fruit on a wooden table",
    "a lighthouse on a rocky coast at sunset",
    "a cat sleeping on a stack of books",
    "a busy city street at night in the rain",
    "a snowy mountain landscape with a frozen lake",
    "an oil painting of a sailing ship in a storm",
)
MEANINGLESS = "MEANINGLESS"


@dataclass(frozen=True)
class Scenario:
    """A sampler: ``name`` (``ddim50``), ``sampler`` (``ddim`` / ``ddpm``), ``num_steps`` T, ``eta``."""

    name: str
    sampler: str
    num_steps: int
    eta: float


def parse_scenarios(text: str) -> list[Scenario]:
    """``"ddim25,ddpm100"`` -> scenarios; ``ddpm`` means DDIM with eta 1."""
    scenarios = []
    for name in filter(None, (s.strip() for s in text.split(","))):
        match = re.fullmatch(r"(ddim|ddpm)(\d+)", name)
        if not match or int(match.group(2)) < 1:
            raise ValueError(f"--scenarios: {name!r} is not ddim<T> or ddpm<T>")
        scenarios.append(Scenario(name, match.group(1), int(match.group(2)), 1.0 if match.group(1) == "ddpm" else 0.0))
    if not scenarios:
        raise ValueError("--scenarios: empty")
    return scenarios


@dataclass(frozen=True)
class Row:
    """One row of a table: a registered method (``benchmarks.methods``; None: the sequential sampler)
    under the paper's name; a ``hidden`` row is run as the reference only, not reported."""

    name: str
    method: Method | None
    hidden: bool = False


def method_row(name: str) -> Row:
    """The ``--methods`` entry ``name``: the paper's FP, FP+, ParaTAA-m{m} (the affine equations, new steps
    copied, as the reference scripts; any memory m >= 2), ParaDiGMS, and this library's ``default``
    (``paratAA.RECOMMENDED``, at the table's ``--tol``), from the method registry."""
    if name == "sequential":
        return Row(name, None)
    if name in ("FP", "FP+", "ParaDiGMS", "default"):
        return Row(name, METHODS[name])
    memory = name[len("ParaTAA-m"):]
    if name.startswith("ParaTAA-m") and memory.isdigit() and int(memory) >= 2:
        return Row(name, METHODS["ParaTAA paper m2"].variant(name, memory_size=int(memory)))
    raise ValueError(f"--methods: unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")


def read_prompts(path: str | None) -> list[str]:
    """Prompts, one per non-empty line of ``path``, or the built-in list."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts_file: no prompts in {path}")
    return prompts


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Conditioning:
    """Per-sample conditioning of the whole run: DiT class labels or SD prompts, fixed by the seed."""

    def __init__(self, args: argparse.Namespace, adapter: Any):
        self.model = args.model
        self.cfg_scale = args.cfg_scale
        if args.model == "dit":
            from paratAA.pipelines.runner import dit_guidance_scale

            self.cfg_scale = dit_guidance_scale(args.cfg_scale, adapter.adapter.num_classes)
            generator = torch.Generator().manual_seed(args.seed)
            self.labels = torch.randint(0, adapter.adapter.num_classes, (args.num_samples,), generator=generator)
        else:
            prompts = read_prompts(args.prompts_file)
            self.prompts = [prompts[k % len(prompts)] for k in range(args.num_samples)]

    def eps_fn(self, adapter: Any, lo: int, hi: int, schedule: Any) -> Callable:
        from paratAA.pipelines.runner import class_conditioning, text_conditioning

        if self.model == "dit":
            return adapter.eps_fn(class_conditioning(self.labels[lo:hi], self.cfg_scale), schedule)
        return adapter.eps_fn(text_conditioning(self.prompts[lo:hi], None, self.cfg_scale), schedule)

    def texts(self, lo: int, hi: int) -> list[str]:
        return self.prompts[lo:hi]


class _Scorer:
    """Image quality of one (scenario, method): FID + IS (DiT) or CLIP score (SD)."""

    def __init__(self, args: argparse.Namespace, extractors: Any, reference: Any, clip: Any):
        from benchmarks.metrics import ImageQuality

        self.quality = ImageQuality(extractors, reference) if args.model == "dit" else None
        self.clip = clip
        self.clip_scores: list[torch.Tensor] = []

    def update(self, images: torch.Tensor, texts: list[str] | None) -> None:
        if self.quality is not None:
            self.quality.update(images)
        else:
            self.clip_scores.append(self.clip.scores(images, texts))

    def compute(self, seed: int) -> dict[str, float | None]:
        if self.quality is not None:
            return self.quality.compute(seed)
        return dict(clip_score=float(torch.cat(self.clip_scores).mean()))


def run_scenario(scenario: Scenario, adapter: Any, conditioning: _Conditioning, methods: list[Row],
                 args: argparse.Namespace, ctx: Any, make_scorer: Callable[[], _Scorer] | None) -> list[dict[str, Any]]:
    """Every method on every batch of one scenario; one row per method."""
    from benchmarks.metrics import pil_to_uint8
    from paratAA import sample_noise, sequential
    from paratAA.distributed import shard_eps_fn

    T = scenario.num_steps
    window = min(args.window or T, T)
    order = min(args.order or (T if args.model == "dit" else 20), window)
    # The reference order K for every solve method but FP (order 1); tolerances: --tol, ParaDiGMS --paradigms_tol.
    rows_run = [Row(r.name, r.method.variant(r.name, order=order), r.hidden)
                if r.method is not None and r.method.kind == "solve" and r.name != "FP" else r for r in methods]
    tolerance = {r.name: (args.tol if r.method.kind == "solve" else args.paradigms_tol)
                 for r in rows_run if r.method is not None}
    schedule = adapter.make_schedule(T, scenario.eta)
    stats = {r.name: dict(iterations=[], evaluations=0, seconds=[], converged=True, max_abs_diff=0.0,
                          psnr_db=math.inf) for r in rows_run}
    scorers = {r.name: make_scorer() for r in rows_run} if make_scorer else {}
    device = ctx.device
    for lo in range(0, args.num_samples, args.batch_size):
        hi = min(lo + args.batch_size, args.num_samples)
        eps_fn = shard_eps_fn(conditioning.eps_fn(adapter, lo, hi, schedule), ctx.accelerator)
        noise = sample_noise(args.seed + lo, hi - lo, T, adapter.latent_shape, device=device)
        if lo == 0:  # warm-up (CUDA kernels, cuDNN autotuning) outside every timing
            warm = noise[:, T]
            eps_fn(warm, torch.full((hi - lo,), T - 1, device=device), torch.arange(hi - lo, device=device))
        _sync(device)
        start = time.perf_counter()
        reference = sequential(eps_fn, schedule, noise)[:, 0]
        _sync(device)
        sequential_outcome = dict(iterations=T, evaluations=T * (hi - lo), seconds=time.perf_counter() - start,
                                  converged=True, samples=reference)
        for r in rows_run:
            if r.method is None:
                outcome = sequential_outcome
            else:
                _sync(device)
                outcome = run_outcome(r.method, eps_fn, schedule, noise, window, tolerance[r.name])
            s = stats[r.name]
            s["iterations"].append(outcome["iterations"])
            s["evaluations"] += outcome["evaluations"]
            s["seconds"].append(outcome["seconds"])
            s["converged"] = s["converged"] and bool(outcome["converged"])
            diff = latent_metrics(outcome["samples"], reference)
            s["max_abs_diff"] = max(s["max_abs_diff"], diff["max_abs_diff"])
            s["psnr_db"] = min(s["psnr_db"], diff["psnr_db"])
            if scorers:
                images = pil_to_uint8(adapter.decode(outcome["samples"]))
                scorers[r.name].update(images, conditioning.texts(lo, hi) if args.model == "sd" else None)
        if ctx.is_main:
            print(f"  {scenario.name}: samples {hi}/{args.num_samples} "
                  + ", ".join(f"{n} {stats[n]['iterations'][-1]} it" for n in stats), file=sys.stderr, flush=True)
    rows = []
    sequential_seconds = sum(stats["sequential"]["seconds"]) if "sequential" in stats else None
    for r in rows_run:
        s = stats[r.name]
        if r.hidden:
            continue
        options = r.method.options if r.method is not None else {}
        seconds = sum(s["seconds"])
        row = dict(scenario=scenario.name, sampler=scenario.sampler, num_steps=T, eta=scenario.eta, method=r.name,
                   window=window, order=options.get("order"), memory=options.get("memory_size"),
                   tolerance=tolerance.get(r.name),
                   steps=sum(s["iterations"]) / len(s["iterations"]), max_steps=max(s["iterations"]),
                   evaluations=s["evaluations"], seconds_total=seconds, seconds_per_batch=seconds / len(s["seconds"]),
                   speedup=(sequential_seconds / seconds) if sequential_seconds and seconds > 0 else None,
                   converged=s["converged"], max_abs_diff=s["max_abs_diff"], psnr_db=s["psnr_db"])
        if scorers:
            row.update(scorers[r.name].compute(args.seed))
        rows.append(row)
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_tables(report: dict[str, Any]) -> str:
    """Markdown: one table per scenario, methods as rows, the paper's columns."""
    dit = report["settings"]["model"] == "dit"
    tag = f" ({MEANINGLESS})" if report["meaningless"] else ""
    out = []
    if report["meaningless"]:
        out.append(f"**{MEANINGLESS} quality numbers (smoke test): " + "; ".join(report["meaningless_reasons"]) + ".**")
    quality = [f"FID{tag}", f"IS{tag}"] if dit else [f"CLIP score{tag}"]
    for scenario in report["scenarios"]:
        rows = scenario["rows"]
        first = rows[0]
        out.append(f"\n**{report['settings']['model'].upper()} {first['sampler'].upper()} {first['num_steps']} steps"
                   f"{' (eta 1)' if first['eta'] else ''}**, {report['settings']['num_samples']} samples, batch "
                   f"{report['settings']['batch_size']}, window {first['window']}, tol {report['settings']['tol']:g}\n")
        out.append("| method | steps | time (s/batch) | speed-up | " + " | ".join(quality) + " | max abs diff vs seq |")
        out.append("|---|---|---|---|" + "---|" * len(quality) + "---|")
        for r in rows:
            metrics = ([_fmt(r.get("fid"), ".4g"), _fmt(r.get("is_mean"), ".4g")] if dit
                       else [_fmt(r.get("clip_score"), ".2f")])
            flag = "" if r["converged"] else " (not converged)"
            out.append(f"| {r['method']}{flag} | {r['steps']:.1f} | {r['seconds_per_batch']:.2f} "
                       f"| {_fmt(r['speedup'], '.2f')} | " + " | ".join(metrics) + f" | {r['max_abs_diff']:.1e} |")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("dit", "sd"), required=True)
    parser.add_argument("--model_path", default="tiny", help="hub id, local directory (DiT: or .pt), or 'tiny'")
    parser.add_argument("--vae_path", default=None, help="DiT only: VAE hub id / directory (default: the model's)")
    parser.add_argument("--num_samples", type=int, default=4, help="images per scenario and method (paper: 50000 for DiT)")
    parser.add_argument("--batch_size", type=int, default=4, help="samples solved together")
    parser.add_argument("--scenarios", default=None,
                        help="comma-separated ddim<T>/ddpm<T> (default DiT: ddim25,ddim50,ddim100,ddpm100; "
                             "SD: ddim25,ddim50,ddim100)")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help=f"comma-separated, from {', '.join(ALL_METHODS)}")
    parser.add_argument("--window", type=int, default=0, help="window size (0: T)")
    parser.add_argument("--order", type=int, default=0,
                        help="order K of FP+/ParaTAA (0: DiT T, SD 20; capped at the window)")
    parser.add_argument("--tol", type=float, default=1e-3, help="tol1 = tol2 of FP/FP+/ParaTAA")
    parser.add_argument("--paradigms_tol", type=float, default=0.1, help="ParaDiGMS tolerance (diffusers' default 0.1)")
    parser.add_argument("--cfg_scale", type=float, default=4.0, help="guidance scale (reference scripts: 4.0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference_images", default=None,
                        help="FID reference: image folder, .npz (arr_0 uint8 NHWC, or mu/sigma), 'patch-crops' "
                             "(real crops of the patches model's photos), or 'random' (noise images: meaningless); "
                             "without it FID is n/a")
    parser.add_argument("--feature_extractor", choices=("inception", "patches", "tiny-random"), default="inception",
                        help="FID/IS features: torch-fidelity InceptionV3 (needs the metrics extra), the patches "
                             "model's fixed PCA space (FID only; with --reference_images patch-crops) or a random "
                             "stand-in (meaningless)")
    parser.add_argument("--inception_weights", default=None,
                        help="local weights-inception-2015-12-05-6726825d.pth (needed offline)")
    parser.add_argument("--prompts_file", default=None, help="SD: one prompt per line (default: a built-in list of 8)")
    parser.add_argument("--clip_model", default="openai/clip-vit-large-patch14",
                        help="SD: CLIP model directory / hub id, or 'tiny' (random: meaningless)")
    parser.add_argument("--no_quality", action="store_true", help="skip decoding and quality metrics")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true", help="run the diffusion networks in float16")
    parser.add_argument("--max_network_batch", type=int, default=0,
                        help="most rows per network forward pass (0: 64, or 1024 for the tiny models)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON path (default benchmarks/results/paper_tables_<model>.json)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run every scenario, print the tables, write the JSON (process 0)."""
    from benchmarks.solver_overhead import machine_info
    from paratAA.distributed import init_processes

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        scenarios = parse_scenarios(args.scenarios or DEFAULT_SCENARIOS[args.model])
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        methods = [method_row(n) for n in names]
        if args.prompts_file is not None:
            read_prompts(args.prompts_file)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    if "sequential" not in names:  # always the reference of the latent differences and the speed-up
        methods.insert(0, Row("sequential", None, hidden=True))
    if args.num_samples < 1 or args.batch_size < 1:
        parser.error("--num_samples and --batch_size must be >= 1")
    if args.max_network_batch != 0 and args.max_network_batch < 2:
        parser.error("--max_network_batch must be 0 (automatic) or >= 2")
    if not (args.tol > 0 and args.paradigms_tol > 0) or args.window < 0 or args.order < 0:
        parser.error("--tol / --paradigms_tol must be > 0, --window / --order >= 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"paper_tables_{args.model}.json"

    start = time.perf_counter()
    ctx = init_processes(torch.device(args.device))
    from paratAA.cli.models import load_dit, load_text_to_image

    args.max_network_batch = args.max_network_batch or (1024 if args.model_path == "tiny" else 64)
    dtype = "float16" if args.fp16 else "float32"
    if args.model == "dit":
        adapter = load_dit(args.model_path, args.vae_path, ctx.device, dtype, max_batch_size=args.max_network_batch)
    else:
        adapter = load_text_to_image(args.model_path, ctx.device, dtype, max_batch_size=args.max_network_batch)
    adapter.make_schedule(10)  # the latent shape and decoder; each scenario makes its own schedule
    conditioning = _Conditioning(args, adapter)

    reasons = []
    if args.model_path == "tiny":
        reasons.append("tiny random-weight diffusion model")
    make_scorer, quality_info = None, {}
    if ctx.is_main and not args.no_quality:
        from benchmarks.metrics import CLIPScorer, build_feature_extractors, load_reference

        if args.model == "dit":
            try:
                extractors = build_feature_extractors(args.feature_extractor, args.inception_weights, ctx.device)
            except (ModuleNotFoundError, ValueError) as error:
                raise SystemExit(f"--feature_extractor {args.feature_extractor}: {error} (the inception extractor "
                                 "needs the 'inception' extra: torchmetrics + torch-fidelity)") from error
            reference = None
            if args.reference_images is not None:
                image_side = adapter.decode(torch.zeros((1, *adapter.latent_shape)))[0].size[0]
                reference = load_reference(args.reference_images, extractors, image_size=image_side)
                if reference.meaningless:
                    reasons.append("random-noise reference images")
            if extractors.meaningless:
                reasons.append("tiny-random feature extractor instead of InceptionV3")
            quality_info = dict(feature_extractor=extractors.name, reference=reference.source if reference else None,
                                reference_count=reference.num_samples if reference else 0)
            make_scorer = lambda: _Scorer(args, extractors, reference, None)  # noqa: E731
        else:
            try:
                clip = CLIPScorer(args.clip_model, ctx.device)
            except OSError as error:
                raise SystemExit(f"--clip_model {args.clip_model}: cannot load it ({error})") from error
            if clip.meaningless:
                reasons.append("tiny random CLIP model")
            quality_info = dict(clip_model=clip.name, clip_score="100 * max(cos(image, text), 0), mean over images")
            make_scorer = lambda: _Scorer(args, None, None, clip)  # noqa: E731

    report_scenarios = []
    for scenario in scenarios:
        rows = run_scenario(scenario, adapter, conditioning, methods, args, ctx, make_scorer)
        report_scenarios.append(dict(scenario=scenario.name, sampler=scenario.sampler, num_steps=scenario.num_steps,
                                     eta=scenario.eta, rows=rows))
    report = dict(benchmark="paper_tables",
                  command=" ".join(["python -m benchmarks.paper_tables", *(argv if argv is not None else sys.argv[1:])]),
                  machine=machine_info("cuda" if ctx.device.type == "cuda" else "cpu"),
                  num_processes=ctx.num_processes, torch_threads=torch.get_num_threads(),
                  seconds=time.perf_counter() - start,
                  settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  meaningless=bool(reasons), meaningless_reasons=reasons, quality=quality_info,
                  scenarios=report_scenarios)
    if ctx.is_main:
        print(format_tables(report))
        print(f"\ntotal {report['seconds']:.0f} s")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
        print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
