"""Run folders of the entry scripts: config, per-iteration metrics and images, summary, latents.

One run writes one new folder under ``--output_path`` (never reusing an existing one)::

    <run>/config.json            every resolved argument, model ids, library versions, world size
    <run>/metrics.jsonl          one JSON line per parallel iteration (an ``IterationRecord``)
    <run>/summary.json           iterations / evaluations / seconds per sample and in total
    <run>/latents.safetensors    the final latents, float64, key "samples" (B, *latent)
    <run>/sample_<k>/step_<j>.png  decoded x0 after iteration j of sample k (step_0 = the start),
                                   one per iteration in which sample k was still being solved
    <run>/sample_<k>/evolution.gif the step images as an animation
    <run>/sample_<k>/final.png     the decoded final sample
    <run>/contact_sheet.png        every step image at once: row k = sample k, column j = step_<j>

Images are saved at the model's resolution; the GIF and the contact sheet, which are for looking
at, enlarge small images (pixel-space models of 16x16) to at least ``VIEW_SIZE`` pixels.

Only the main process creates a ``RunRecorder``. Decoding goes through a callable (the model
adapter's ``decode``), so this module never imports diffusers.
"""

from __future__ import annotations

import json
import math
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from paratAA import EpsFn, Schedule, solve
from paratAA.cli import user_errors

if TYPE_CHECKING:
    from paratAA import IterationRecord, SolveResult

Decode = Callable[[torch.Tensor], list[Image.Image]]

# Identical images have infinite PSNR; JSON has no infinity, so the value is capped here.
PSNR_CAP_DB = 100.0
GIF_FRAME_MS = 250
GIF_LAST_FRAME_MS = 1500
VIEW_SIZE = 96  # smallest side of images in the GIF and the contact sheet
SHEET_GAP = 2


def enlarged(image: Image.Image, min_size: int = VIEW_SIZE) -> Image.Image:
    """``image`` scaled up by a whole factor (nearest neighbour) until its smaller side is >= ``min_size``."""
    factor = max(1, -(-min_size // min(image.size)))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def contact_sheet(rows: Sequence[Sequence[Image.Image]], min_size: int = VIEW_SIZE) -> Image.Image:
    """One picture of a grid of images: ``rows[r][c]`` at row r, column c, on white.

    Rows may have different lengths (a sample that finished early has fewer iterations). Images are
    enlarged like ``enlarged`` and separated by a small gap.
    """
    cells = [[enlarged(image.convert("RGB"), min_size) for image in row] for row in rows]
    width = max(image.width for row in cells for image in row)
    height = max(image.height for row in cells for image in row)
    columns = max(len(row) for row in cells)
    sheet = Image.new("RGB", (columns * (width + SHEET_GAP) - SHEET_GAP, len(cells) * (height + SHEET_GAP) - SHEET_GAP),
                      "white")
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            sheet.paste(image, (c * (width + SHEET_GAP), r * (height + SHEET_GAP)))
    return sheet


def create_run_dir(output_path: str | Path, name: str) -> Path:
    """Create a fresh folder ``<output_path>/<name>-<timestamp>[-<n>]`` and return it.

    ``mkdir`` without ``exist_ok`` is atomic, so two runs started in the same second (or a
    second run with the same arguments) get different folders and nothing is ever overwritten.

    Args:
        output_path: parent folder (created if missing).
        name: run name built from the key arguments.

    Returns:
        The new, empty folder.
    """
    parent = Path(output_path)
    parent.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for counter in range(10_000):
        candidate = parent / (stem if counter == 0 else f"{stem}-{counter}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not find a free run folder name under {parent}")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a run depends on (None where not installed)."""
    from paratAA import __version__  # the package may run from a checkout, not installed

    versions: dict[str, str | None] = {"paratAA": __version__}
    for package in ("torch", "diffusers", "transformers", "accelerate"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (strict: no NaN/Infinity)."""
    path.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_config(run_dir: Path, script: str, args: dict[str, Any], resolved: dict[str, Any],
                 world_size: int) -> None:
    """Write ``config.json``: the command line's arguments, what they resolved to, versions, world size.

    Args:
        run_dir: the run folder.
        script: the entry script's name.
        args: every parsed argument (``vars(args)``).
        resolved: values derived at run time (model id, device, drawn class labels, iteration cap, ...).
        world_size: number of processes sharing the network calls.
    """
    write_json(run_dir / "config.json", {"script": script, "args": args, "resolved": resolved,
                                         "world_size": world_size, "versions": library_versions()})


def record_to_json(record: IterationRecord) -> dict[str, Any]:
    """One ``metrics.jsonl`` line: everything in the record except the x0 tensor."""
    return {
        "iteration": record.iteration,
        "evaluations": record.evaluations,
        "windows": [list(w) if w is not None else None for w in record.windows],
        "max_residual": record.max_residual,
        "frontier": record.frontier,
        "network_seconds": record.network_seconds,
        "solver_seconds": record.solver_seconds,
        "done": record.done,
    }


def solve_summary(result: SolveResult, sample_info: Sequence[dict[str, Any]],
                  per_sample: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Totals and per-sample statistics of one solve.

    A sample's ``seconds`` is the network + solver time of the iterations up to and including
    its last one (the samples of a batch are solved together, so this is when it was ready);
    image writing is excluded.

    Args:
        result: what ``paratAA.solve`` returned.
        sample_info: per sample, what it is (seed, class label or prompt, ...), listed first.
        per_sample: per sample, further results (e.g. the comparison with the sequential sampler).

    Returns:
        A JSON-ready dict.
    """
    final_frontier = result.records[-1].frontier if result.records else [0] * len(sample_info)
    samples = []
    for k, info in enumerate(sample_info):
        active = [r for r in result.records if r.windows[k] is not None]
        samples.append({
            "sample": k,
            **info,
            "iterations": result.per_sample_iterations[k],
            "evaluations": result.per_sample_evaluations[k],
            "seconds": sum(r.network_seconds + r.solver_seconds for r in active),
            "converged": final_frontier[k] == 0,
            **(per_sample[k] if per_sample is not None else {}),
        })
    return {
        "iterations": result.iterations,
        "evaluations": result.evaluations,
        "seconds": result.seconds,
        "network_seconds": sum(r.network_seconds for r in result.records),
        "solver_seconds": sum(r.solver_seconds for r in result.records),
        "converged": result.converged,
        "samples": samples,
    }


def psnr_db(image_a: Image.Image, image_b: Image.Image) -> float:
    """PSNR of two 8-bit images in dB, capped at ``PSNR_CAP_DB`` (identical images)."""
    a = np.asarray(image_a, dtype=np.float64)
    b = np.asarray(image_b, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(255.0**2 / mse))


def compare_with_sequential(
    parallel: torch.Tensor, sequential: torch.Tensor, decode: Decode, sequential_seconds: float
) -> list[dict[str, float]]:
    """Per sample: largest absolute latent difference and PSNR of the decoded images.

    Args:
        parallel: final latents of the parallel solve, (B, *latent).
        sequential: final latents of the sequential sampler from the same noise, (B, *latent).
        decode: latents -> PIL images.
        sequential_seconds: wall-clock time of the sequential sampler (whole batch).

    Returns:
        One dict per sample with ``sequential_max_abs_diff``, ``sequential_psnr_db`` and
        ``sequential_seconds`` (the batch's time: every sample was ready at its end).
    """
    parallel, sequential = parallel.double().cpu(), sequential.double().cpu()
    images_p, images_s = decode(parallel), decode(sequential)
    return [
        {
            "sequential_max_abs_diff": float((parallel[k] - sequential[k]).abs().max()),
            "sequential_psnr_db": psnr_db(images_p[k], images_s[k]),
            "sequential_seconds": sequential_seconds,
        }
        for k in range(parallel.shape[0])
    ]


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of a summary: per sample, its iterations against the steps it solved."""
    lines = []
    for sample in summary["samples"]:
        line = (f"sample {sample['sample']}: {sample['iterations']} parallel iterations for "
                f"{summary['solved_steps']} steps ({sample['evaluations']} network evaluations, "
                f"{sample['seconds']:.2f} s"
                f"{'' if sample['converged'] else ', stopped by --max_steps before converging'})")
        if "sequential_max_abs_diff" in sample:
            line += (f"; vs sequential: max |diff| {sample['sequential_max_abs_diff']:.2e}, "
                     f"PSNR {sample['sequential_psnr_db']:.1f} dB")
        lines.append(line)
    return lines


def run_solve(
    eps_fn: EpsFn,
    schedule: Schedule,
    noise: torch.Tensor,
    options: dict[str, Any],
    run_dir: Path | None,
    decode: Decode,
    sample_info: Sequence[dict[str, Any]],
    *,
    init_trajectory: torch.Tensor | None = None,
    variation_steps: int | None = None,
    description: str = "ParaTAA",
    save_steps: bool = True,
    sequential_fn: Callable[[], torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[SolveResult, dict[str, Any] | None]:
    """Run one ``paratAA.solve`` on every process; on the main process record it into ``run_dir``.

    Args:
        eps_fn, schedule, noise, init_trajectory, variation_steps: as for ``paratAA.solve``.
        options: the solver's settings (``paratAA.cli.solver_options``).
        run_dir: the folder to write, or None on processes that do not write.
        decode, save_steps, description: see ``RunRecorder``.
        sample_info: per-sample fields for the summary.
        sequential_fn: with ``--check_sequential``: returns the sequential sampler's final latents
            (B, *latent); it is timed and compared with the parallel result (main process only).
        extra: top-level fields to add to the summary.

    Returns:
        The solve's result, and the summary written (None on other processes).

    Raises:
        UsageError: the solver rejected an argument.
    """
    num_steps = schedule.num_steps
    solved_steps = variation_steps if init_trajectory is not None and variation_steps else num_steps
    recorder = None
    if run_dir is not None:
        start_x0 = noise[:, num_steps] if init_trajectory is None else init_trajectory[:, 0]
        total = min(solved_steps, options.get("max_iters") or solved_steps)
        recorder = RunRecorder(run_dir, decode, start_x0, total, save_steps, description)
    with user_errors(ValueError):
        result = solve(eps_fn, schedule, noise, **options, init_trajectory=init_trajectory,
                       variation_steps=variation_steps,
                       callback=recorder.on_iteration if recorder is not None else None)
    if recorder is None:
        return result, None
    extra = {"num_steps": num_steps, "solved_steps": solved_steps, **(extra or {})}
    comparisons = None
    if sequential_fn is not None:
        start = time.perf_counter()
        reference = sequential_fn()
        seconds = time.perf_counter() - start
        comparisons = compare_with_sequential(result.samples, reference, decode, seconds)
        extra.update(sequential_max_abs_diff=max(c["sequential_max_abs_diff"] for c in comparisons),
                     sequential_psnr_db=min(c["sequential_psnr_db"] for c in comparisons),
                     sequential_seconds=seconds)
    return result, recorder.finish(result, sample_info, extra, comparisons)


def print_report(summary: dict[str, Any], run_dir: Path) -> None:
    """Print the per-sample lines of a summary, then (always last) the run folder."""
    print("\n".join(summary_lines(summary)))
    print(f"Output folder: {run_dir}")


class RunRecorder:
    """Writes one solve's metrics, images and summary into a run folder and shows progress.

    Pass ``recorder.on_iteration`` as the solver's ``callback``, then call ``finish``.

    Args:
        run_dir: the (existing) folder to write into.
        decode: latents (n, *latent) -> n PIL images.
        start_x0: (B, *latent) the estimate of x0 before the first iteration (saved as step_0).
        total_iterations: the progress bar's length (the iteration cap).
        save_steps: write ``step_<j>.png`` and the GIF (else only the final image).
        description: the progress bar's label.
    """

    def __init__(
        self,
        run_dir: Path,
        decode: Decode,
        start_x0: torch.Tensor,
        total_iterations: int,
        save_steps: bool = True,
        description: str = "ParaTAA",
    ) -> None:
        self.run_dir = run_dir
        self.decode = decode
        self.save_steps = save_steps
        self.num_samples = start_x0.shape[0]
        self._steps_saved = [0] * self.num_samples
        self._metrics = (run_dir / "metrics.jsonl").open("w")
        for k in range(self.num_samples):
            self.sample_dir(k).mkdir(exist_ok=True)
        if save_steps:
            self._save_steps(start_x0, range(self.num_samples))
        self._bar = tqdm(total=total_iterations, desc=description, unit="iter", dynamic_ncols=True)

    def sample_dir(self, k: int) -> Path:
        """Folder of sample ``k``."""
        return self.run_dir / f"sample_{k}"

    def _save_steps(self, x0: torch.Tensor, samples: Sequence[int]) -> None:
        if not samples:
            return
        images = self.decode(x0[list(samples)].float().cpu())
        for k, image in zip(samples, images):
            image.save(self.sample_dir(k) / f"step_{self._steps_saved[k]}.png")
            self._steps_saved[k] += 1

    def on_iteration(self, record: IterationRecord) -> None:
        """Solver callback: log the iteration, save the images of samples still being solved."""
        self._metrics.write(json.dumps(record_to_json(record)) + "\n")
        self._metrics.flush()
        if self.save_steps:
            active = [k for k, window in enumerate(record.windows) if window is not None]
            self._save_steps(record.x0, active)
        residuals = [r for r in record.max_residual if r is not None]
        self._bar.set_postfix(
            frontier=max(record.frontier), residual=f"{max(residuals):.2e}" if residuals else "-", refresh=False
        )
        self._bar.update(1)

    def finish(
        self,
        result: SolveResult,
        sample_info: Sequence[dict[str, Any]],
        extra: dict[str, Any] | None = None,
        per_sample: Sequence[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Close the bar; write final images, GIFs, latents and ``summary.json``.

        Args:
            result: the finished solve.
            sample_info, per_sample: per-sample fields for the summary (see ``solve_summary``).
            extra: top-level fields to add to the summary.

        Returns:
            The summary that was written.
        """
        self._bar.close()
        self._metrics.close()
        samples = result.samples.detach().cpu()
        for k, image in enumerate(self.decode(samples.float())):
            image.save(self.sample_dir(k) / "final.png")
            if self.save_steps:
                self._write_gif(k)
        if self.save_steps:
            contact_sheet([self._step_images(k) for k in range(self.num_samples)]).save(
                self.run_dir / "contact_sheet.png")
        save_file({"samples": samples.double().contiguous()}, str(self.run_dir / "latents.safetensors"))
        summary = {**solve_summary(result, sample_info, per_sample), **(extra or {})}
        write_json(self.run_dir / "summary.json", summary)
        return summary

    def _step_images(self, k: int) -> list[Image.Image]:
        return [Image.open(self.sample_dir(k) / f"step_{j}.png") for j in range(self._steps_saved[k])]

    def _write_gif(self, k: int) -> None:
        frames = [enlarged(frame) for frame in self._step_images(k)]
        durations = [GIF_FRAME_MS] * (len(frames) - 1) + [GIF_LAST_FRAME_MS]
        frames[0].save(self.sample_dir(k) / "evolution.gif", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0)
