"""Run folders of the entry scripts: config, per-iteration metrics and images, summary, latents.

One run writes one new folder under ``--output_path`` (never reusing an existing one)::

    <run>/config.json            every resolved argument, model ids, library versions, world size
    <run>/metrics.jsonl          one JSON line per parallel iteration (an ``IterationRecord``)
    <run>/summary.json           "status", then iterations / evaluations / seconds per sample and in total
    <run>/latents.safetensors    the final latents, float64, key "samples" (B, *latent)
    <run>/sample_<k>/step_<j>.png  decoded x0 after iteration j of sample k (step_0 = the start),
                                   one per iteration in which sample k was still being solved
    <run>/sample_<k>/evolution.gif the step images as an animation, one frame each, with a progress strip
    <run>/sample_<k>/final.png     the decoded final sample
    <run>/sample_<k>/clip.gif      a video sample's final clip (its step and final images are frame strips)
    <run>/contact_sheet.png        every step image at once (of a video, its middle frame): row k = sample k
                                   (labelled with its class or prompt and seed), column j = step_<j>
                                   (labelled); a sample that converged early repeats its final image,
                                   dimmed and marked "done"

Images are saved at the model's resolution; the GIF and the contact sheet, which are for looking
at, enlarge small images (pixel-space models of 16x16) to at least ``VIEW_SIZE`` pixels.

``summary.json`` always says how far the run got: its ``"status"`` is ``"running"`` (rewritten after
every iteration with the numbers so far; a run killed with SIGKILL stays so), ``"completed"``,
``"interrupted"`` (SIGINT / SIGTERM) or ``"failed"`` (with an ``"error"`` line). Every JSON file is
strict (no NaN / Infinity) and replaced atomically. Only the main process creates folders
(``RunFolder``) and ``RunRecorder`` s. Decoding goes through a callable (the model adapter's
``decode``), so this module never imports diffusers.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from paratAA import EpsFn, Schedule, SolverOptions, solve
from paratAA.cli.images import contact_sheet, enlarged, frame_strip, gif_frame, middle_frame, sample_label, save_clip
from paratAA.cli.process import signals_deferred, signals_ignored, user_errors
from paratAA.errors import Interrupted, NonFiniteError, RunAborted, first_line

if TYPE_CHECKING:
    from paratAA import IterationRecord, SolveResult

Decode = Callable[[torch.Tensor], list[Image.Image]]

# Identical images have infinite PSNR; JSON has no infinity, so the value is capped here.
PSNR_CAP_DB = 100.0
GIF_FRAME_MS = 250
GIF_LAST_FRAME_MS = 1500
RUNNING, COMPLETED, INTERRUPTED, FAILED = "running", "completed", "interrupted", "failed"


def run_name(family: str, sampler: str | None, num_steps: int, options: SolverOptions, seed: int,
             variation_steps: int | None = None) -> str:
    """A run folder's name from its key settings: ``<family>[-<sampler>][-winit]-T<T>[-v<V>]-w<W>-o<K>-m<M>-seed<S>``.

    ``options`` are those in force (window capped at T, order a number: ``SolverOptions.resolved``);
    ``sampler`` is an explicit ``--sampler`` (``"dpm++2m"`` -> ``-dpm2m``); ``variation_steps`` marks a warm start.
    """
    tag = "" if sampler is None else "-" + sampler.replace("++", "")
    warm = "" if variation_steps is None else "-winit"
    variation = "" if variation_steps is None else f"-v{variation_steps}"
    return (f"{family}{tag}{warm}-T{num_steps}{variation}-w{options.window_size}-o{options.order}"
            f"-m{options.memory_size}-seed{seed}")


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
    """Write ``obj`` as indented strict JSON (no NaN/Infinity: ValueError), atomically: an interrupted
    write leaves the previous file, never a truncated one."""
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_status(folder: Path, status: str, summary: dict[str, Any], error: str | None = None) -> None:
    """Write ``<folder>/summary.json``: ``status`` (and ``error``) first, then ``summary``."""
    write_json(folder / "summary.json", {"status": status, **({"error": error} if error else {}), **summary})


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


def solve_summary(records: Sequence[IterationRecord], sample_info: Sequence[dict[str, Any]],
                  per_sample: Sequence[dict[str, Any]] | None = None, seconds: float | None = None) -> dict[str, Any]:
    """Totals and per-sample statistics of the iterations of one solve so far (all of them when it ended).

    A sample's ``seconds`` is the network + solver time of the iterations up to and including
    its last one (the samples of a batch are solved together, so this is when it was ready);
    image writing is excluded.

    Args:
        records: the solve's ``IterationRecord`` s so far (``SolveResult.records`` at the end).
        sample_info: per sample, what it is (seed, class label or prompt, ...), listed first.
        per_sample: per sample, further results (e.g. the comparison with the sequential sampler).
        seconds: the solve's wall-clock (``SolveResult.seconds``); default: its iterations' time.

    Returns:
        A JSON-ready dict.
    """
    samples = []
    for k, info in enumerate(sample_info):
        active = [r for r in records if r.windows[k] is not None]
        samples.append({
            "sample": k,
            **info,
            "iterations": len(active),
            "evaluations": sum(r.windows[k][1] - r.windows[k][0] for r in active),
            "seconds": sum(r.network_seconds + r.solver_seconds for r in active),
            "converged": bool(records) and records[-1].frontier[k] == 0,
            **(per_sample[k] if per_sample is not None else {}),
        })
    network = sum(r.network_seconds for r in records)
    solver = sum(r.solver_seconds for r in records)
    return {
        "iterations": len(records),
        "evaluations": sum(r.evaluations for r in records),
        "seconds": network + solver if seconds is None else seconds,
        "network_seconds": network,
        "solver_seconds": solver,
        "converged": all(sample["converged"] for sample in samples),
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
        One dict per sample with ``sequential_max_abs_diff``, ``sequential_relative_diff`` (the
        same divided by the sequential sample's largest absolute entry), ``sequential_psnr_db``
        (``PSNR_CAP_DB`` when the 8-bit images are identical) and ``sequential_seconds`` (the
        batch's time: every sample was ready at its end).

    Raises:
        NonFiniteError: the sequential sampler's result holds NaN or inf.
    """
    parallel, sequential = parallel.double().cpu(), sequential.double().cpu()
    if not bool(torch.isfinite(sequential).all()):
        raise NonFiniteError("--check_sequential: diffusers' sequential sampler returned NaN or inf")
    images_p, images_s = decode(parallel), decode(sequential)
    return [
        {
            "sequential_max_abs_diff": float((parallel[k] - sequential[k]).abs().max()),
            "sequential_relative_diff": float((parallel[k] - sequential[k]).abs().max()
                                              / sequential[k].abs().max().clamp_min(1e-30)),
            "sequential_psnr_db": psnr_db(images_p[k], images_s[k]),
            "sequential_seconds": sequential_seconds,
        }
        for k in range(parallel.shape[0])
    ]


def speed_line(seconds: float, sequential_seconds: float, *, predicted: bool = False, device: str | None = None,
               measure_seconds: float = 0.0) -> str:
    """One line comparing the solve's wall-clock with the sequential sampler's.

    E.g. ``"2.3x faster than sequential on this GPU (1.20 s against 2.76 s)"`` or ``"3.5x slower than
    sequential on this CPU (5.70 s against 1.63 s)"``; ``predicted``: the sequential time is the
    planner's prediction, not a measurement; ``measure_seconds``: time the planner spent measuring
    the network's cost (not in ``seconds``).
    """
    where = f" on this {device}" if device else ""
    basis = " predicted" if predicted else ""
    extra = f"; {measure_seconds:.2f} s more measuring the network's cost" if measure_seconds > 0 else ""
    numbers = f"({seconds:.2f} s against {sequential_seconds:.2f} s{basis} sequential{extra})"
    if seconds <= 0 or sequential_seconds <= 0:
        return f"speed against sequential unknown {numbers}"
    ratio = sequential_seconds / seconds
    if ratio >= 1:
        return f"{ratio:.1f}x faster than sequential{where} {numbers}"
    return f"{1 / ratio:.1f}x slower than sequential{where} {numbers}"


def speed_fields(result: SolveResult, device_type: str, sequential_seconds: float | None = None) -> dict[str, Any]:
    """Summary fields on speed: the network's and the solver's seconds, the sequential time (measured with
    ``--check_sequential``, else the planner's prediction when ``window_size="auto"`` ran), the ratio and
    its ``"speed"`` line; ``"planner"`` with the plan when there was one."""
    device = {"cpu": "CPU", "cuda": "GPU", "mps": "GPU", "xpu": "XPU"}.get(device_type, device_type)
    plan = result.plan
    fields: dict[str, Any] = {"method": result.method, "network_seconds": result.network_seconds,
                              "solver_seconds": result.solver_seconds}
    measure = plan.measure_seconds if plan is not None else 0.0
    if plan is not None:
        fields["planner"] = plan.as_dict()
    if result.method == "sequential":
        fields["speed"] = plan.message() if plan is not None else "ran the sequential sampler"
        return fields
    source = "measured" if sequential_seconds is not None else ("predicted" if result.sequential_seconds else None)
    reference = sequential_seconds if sequential_seconds is not None else result.sequential_seconds
    if reference is None:
        return fields
    fields.update({"sequential_seconds": reference, "sequential_source": source,
                   "speedup": reference / result.seconds if result.seconds > 0 else None,
                   "speed": speed_line(result.seconds, reference, predicted=source == "predicted", device=device,
                                       measure_seconds=measure)})
    return fields


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of a summary: per sample, its iterations against the steps it solved; then the
    speed against the sequential sampler when known (``speed_fields``)."""
    lines = []
    for sample in summary["samples"]:
        line = (f"sample {sample['sample']}: {sample['iterations']} parallel iterations for "
                f"{summary['solved_steps']} steps ({sample['evaluations']} network evaluations, "
                f"{sample['seconds']:.2f} s"
                f"{'' if sample['converged'] else ', stopped by --max_steps before converging'})")
        if "sequential_max_abs_diff" in sample:
            line += (f"; vs sequential: max |diff| {sample['sequential_max_abs_diff']:.2e} "
                     f"({sample['sequential_relative_diff']:.1e} of the sample's largest entry), "
                     + ("decoded 8-bit images identical" if sample["sequential_psnr_db"] >= PSNR_CAP_DB
                        else f"decoded images' PSNR {sample['sequential_psnr_db']:.1f} dB"))
        lines.append(line)
    if summary.get("speed"):
        lines.append(summary["speed"])
    return lines


def run_solve(
    eps_fn: EpsFn,
    schedule: Schedule,
    noise: torch.Tensor,
    options: SolverOptions,
    run: RunFolder,
    decode: Decode,
    sample_info: Sequence[dict[str, Any]],
    *,
    subfolder: str | None = None,
    init_trajectory: torch.Tensor | None = None,
    variation_steps: int | None = None,
    description: str = "ParaTAA",
    save_steps: bool = True,
    sequential_fn: Callable[[], torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[SolveResult, dict[str, Any] | None]:
    """Run one ``paratAA.solve`` on every process; on the main process record it into the run folder.

    Args:
        eps_fn, schedule, noise, init_trajectory, variation_steps: as for ``paratAA.solve``.
        options: the solver's options (``paratAA.cli.session.start``'s).
        run: the run's folder (its ``path`` is None on processes that do not write).
        decode, save_steps, description: see ``RunRecorder``.
        sample_info: per-sample fields for the summary.
        subfolder: record into ``<run>/<subfolder>`` (created) instead of the run folder itself.
        sequential_fn: with ``--check_sequential``: returns the sequential sampler's final latents
            (B, *latent); it is timed and compared with the parallel result (main process only).
        extra: top-level fields to add to the summary.

    Returns:
        The solve's result, and the completed summary (None on other processes).

    Raises:
        UsageError: the solver rejected an argument.
    """
    num_steps = schedule.num_steps
    solved_steps = variation_steps if init_trajectory is not None and variation_steps else num_steps
    recorder = None
    if run.path is not None:
        folder = run.path if subfolder is None else run.path / subfolder
        folder.mkdir(exist_ok=True)
        start_x0 = noise[:, num_steps] if init_trajectory is None else init_trajectory[:, 0]
        recorder = run.track(RunRecorder(folder, decode, start_x0, solved_steps, sample_info, save_steps,
                                         description, {"num_steps": num_steps, "solved_steps": solved_steps,
                                                       **(extra or {})}))
    with user_errors(ValueError):
        result = solve(eps_fn, schedule, noise, options, init_trajectory=init_trajectory,
                       variation_steps=variation_steps,
                       callback=recorder.on_iteration if recorder is not None else None)
    if recorder is None:
        return result, None
    recorder.finish(result)
    if sequential_fn is None:
        return result, recorder.complete(speed_fields(result, noise.device.type))
    start = time.perf_counter()
    reference = sequential_fn()
    seconds = time.perf_counter() - start
    comparisons = compare_with_sequential(result.samples, reference, decode, seconds)
    return result, recorder.complete(
        {"sequential_max_abs_diff": max(c["sequential_max_abs_diff"] for c in comparisons),
         "sequential_psnr_db": min(c["sequential_psnr_db"] for c in comparisons), "sequential_seconds": seconds,
         **speed_fields(result, noise.device.type, seconds)},
        comparisons)


def print_report(summary: dict[str, Any], run_dir: Path) -> None:
    """Print the per-sample lines of a summary, then (always last) the run folder."""
    print("\n".join(summary_lines(summary)))
    print(f"Output folder: {run_dir}")


class RunRecorder:
    """Writes one solve's metrics, images and summary into a folder and shows progress.

    Pass ``recorder.on_iteration`` as the solver's ``callback``, then call ``finish`` and ``complete``.
    ``summary.json`` is written at once and after every iteration with status ``"running"`` and the
    numbers so far; ``complete`` marks it ``"completed"``, ``abort`` ``"interrupted"`` or ``"failed"``.
    Sample folders are created when their first image is written.

    Args:
        run_dir: the (existing) folder to write into.
        decode: latents (n, *latent) -> n PIL images.
        start_x0: (B, *latent) the estimate of x0 before the first iteration (saved as step_0).
        solved_steps: the steps being solved (the progress bar counts those that are final).
        sample_info: per-sample fields for the summary (see ``solve_summary``).
        save_steps: write ``step_<j>.png`` and the GIF (else only the final image).
        description: the progress bar's label.
        extra: top-level fields of the summary.
    """

    def __init__(
        self,
        run_dir: Path,
        decode: Decode,
        start_x0: torch.Tensor,
        solved_steps: int,
        sample_info: Sequence[dict[str, Any]],
        save_steps: bool = True,
        description: str = "ParaTAA",
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.decode = decode
        self.save_steps = save_steps
        self.sample_info = list(sample_info)
        self.extra = dict(extra or {})
        self.status = RUNNING
        self.records: list[IterationRecord] = []
        self._stop_reasons: list[str] | None = None  # SolveResult.stop_reasons, once the solve has ended
        self.summary = self._summary()
        self.num_samples = start_x0.shape[0]
        self._steps_saved = [0] * self.num_samples
        self._middle_frames: list[list[Image.Image]] = [[] for _ in range(self.num_samples)]  # videos only
        self._solved_steps = solved_steps
        self._metrics = (run_dir / "metrics.jsonl").open("w")
        write_status(run_dir, RUNNING, self.summary)
        if save_steps:
            self._save_steps(start_x0, range(self.num_samples))
        self._bar = tqdm(total=solved_steps, desc=description, unit="step", dynamic_ncols=True)

    def sample_dir(self, k: int) -> Path:
        """Folder of sample ``k`` (created on first use)."""
        folder = self.run_dir / f"sample_{k}"
        folder.mkdir(exist_ok=True)
        return folder

    def _summary(self, per_sample: Sequence[dict[str, Any]] | None = None, seconds: float | None = None,
                 **fields: Any) -> dict[str, Any]:
        if self._stop_reasons is not None:  # the solve has ended: why each sample stopped (SolveResult.stop_reasons)
            per_sample = [{"stop_reason": reason, **(per_sample[k] if per_sample else {})}
                          for k, reason in enumerate(self._stop_reasons)]
        return {**solve_summary(self.records, self.sample_info, per_sample, seconds), **self.extra, **fields}

    def _save_steps(self, x0: torch.Tensor, samples: Sequence[int]) -> None:
        if not samples:
            return
        images = self.decode(x0[list(samples)].float().cpu())
        for k, image in zip(samples, images):
            if isinstance(image, list):  # a video: its frames as a strip; the sheet shows the middle frame
                self._middle_frames[k].append(middle_frame(image))
                image = frame_strip(image)
            image.save(self.sample_dir(k) / f"step_{self._steps_saved[k]}.png")
            self._steps_saved[k] += 1

    def on_iteration(self, record: IterationRecord) -> None:
        """Solver callback: log the iteration, update the summary, save the images of samples still being solved."""
        line = json.dumps(record_to_json(record), allow_nan=False) + "\n"
        with signals_deferred():  # metrics.jsonl and summary.json always count the same iterations
            self._metrics.write(line)
            self._metrics.flush()
            self.records.append(replace(record, x0=None))
            self.summary = self._summary()
            write_status(self.run_dir, RUNNING, self.summary)
        if self.save_steps:
            active = [k for k, window in enumerate(record.windows) if window is not None]
            self._save_steps(record.x0, active)
        residuals = [r for r in record.max_residual if r is not None]
        self._bar.set_postfix(iteration=record.iteration, residual=f"{max(residuals):.2e}" if residuals else "-",
                              refresh=False)
        self._bar.update(self._solved_steps - max(record.frontier) - self._bar.n)  # steps now final

    def finish(self, result: SolveResult) -> None:
        """Close the bar and the metrics; write final images, GIFs and latents; the summary stays "running".

        Args:
            result: the finished solve.
        """
        self._close()
        samples = result.samples.detach().cpu()
        for k, image in enumerate(self.decode(samples.float())):
            if isinstance(image, list):  # a video: the final clip as a GIF, its frames as a strip
                save_clip(image, self.sample_dir(k) / "clip.gif")
                image = frame_strip(image)
            image.save(self.sample_dir(k) / "final.png")
            if self.save_steps:
                self._write_gif(k)
        if self.save_steps:
            columns = max(self._steps_saved)
            cells = [self._middle_frames[k] or self._step_images(k) for k in range(self.num_samples)]
            contact_sheet(cells,
                          row_labels=[sample_label(info) for info in self.sample_info],
                          column_labels=["start"] + [f"it {j}" for j in range(1, columns)]).save(
                self.run_dir / "contact_sheet.png")
        save_file({"samples": samples.double().contiguous()}, str(self.run_dir / "latents.safetensors"))
        self.records = list(result.records)
        self._stop_reasons = list(result.stop_reasons)
        self.summary = self._summary(seconds=result.seconds)
        write_status(self.run_dir, RUNNING, self.summary)

    def complete(self, fields: dict[str, Any] | None = None,
                 per_sample: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Mark the summary "completed", adding ``fields`` (top level) and ``per_sample`` (per sample).

        Returns:
            The summary written (without the status).
        """
        seconds = self.summary["seconds"]
        self.summary = self._summary(per_sample, seconds, **(fields or {}))
        self.status = COMPLETED
        write_status(self.run_dir, COMPLETED, self.summary)
        return self.summary

    def abort(self, status: str, error: str) -> None:
        """Mark the summary ``status`` ("interrupted" or "failed") with what was done so far."""
        self._close()
        self.status = status
        write_status(self.run_dir, status, self.summary, error)

    def _close(self) -> None:
        self._bar.close()
        self._metrics.close()

    def _step_images(self, k: int) -> list[Image.Image]:
        return [Image.open(self.sample_dir(k) / f"step_{j}.png") for j in range(self._steps_saved[k])]

    def _write_gif(self, k: int) -> None:
        images = self._step_images(k)
        frames = [gif_frame(enlarged(image), j, len(images)) for j, image in enumerate(images)]
        durations = [GIF_FRAME_MS] * (len(frames) - 1) + [GIF_LAST_FRAME_MS]
        frames[0].save(self.sample_dir(k) / "evolution.gif", save_all=True, append_images=frames[1:],
                       duration=durations, loop=0)


class RunFolder:
    """A run's folder, whose ``summary.json`` always says how the run ended.

    Entering creates the folder under ``output_path`` (``create_run_dir``) and marks it "running";
    with ``output_path`` None (processes that do not write) ``path`` stays None and nothing is written.
    Recorders of the run are ``track`` ed. Leaving with an exception marks every unfinished recorder's
    summary and the folder's own "interrupted" (SIGINT, SIGTERM) or "failed", with the error's line
    and what was done so far, and raises ``RunAborted`` (which names the folder) from it. A script
    whose summary is not a recorder's (one solve in a subfolder per phase) writes it with ``complete``.

    Args:
        output_path: the parent folder, or None.
        name: the run's name (see ``create_run_dir``).
        half_precision: the network runs in float16 or bfloat16: a ``NonFiniteError`` then suggests
            ``--dtype float32``.
    """

    def __init__(self, output_path: str | Path | None, name: str, *, half_precision: bool = False):
        self._output_path, self._name, self._half_precision = output_path, name, half_precision
        self.path: Path | None = None
        self.fields: dict[str, Any] = {}  # the folder's own summary so far (when no recorder writes into it)
        self.recorders: list[RunRecorder] = []

    def __enter__(self) -> "RunFolder":
        if self._output_path is not None:
            self.path = create_run_dir(self._output_path, self._name)
            write_status(self.path, RUNNING, {})
        return self

    def track(self, recorder: RunRecorder) -> RunRecorder:
        """Register a recorder writing into this run (returned)."""
        self.recorders.append(recorder)
        return recorder

    def complete(self, summary: dict[str, Any]) -> None:
        """Write the folder's own summary, marked "completed"."""
        self.fields = dict(summary)
        if self.path is not None:
            write_status(self.path, COMPLETED, self.fields)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> bool:
        if error is None or not isinstance(error, (Exception, KeyboardInterrupt, Interrupted)):
            return False
        cause = error
        if self._half_precision and isinstance(error, NonFiniteError):
            cause = NonFiniteError(f"{error} (the network runs in half precision: try --dtype float32)")
        if self.path is None:
            if cause is error:
                return False
            raise cause from error
        status = INTERRUPTED if isinstance(cause, (KeyboardInterrupt, Interrupted)) else FAILED
        line = first_line(cause, "")
        message = f"{type(cause).__name__}: {line}" if line else type(cause).__name__
        with signals_ignored():  # marking the folder must not be cut short by a second Ctrl-C
            for recorder in self.recorders:
                if recorder.status == RUNNING:
                    recorder.abort(status, message)
            write_status(self.path, status, self._summary_so_far(), message)
        raise RunAborted(cause, self.path, status) from error

    def _summary_so_far(self) -> dict[str, Any]:
        """The folder's summary: its own recorder's, else its fields plus each subfolder recorder's."""
        for recorder in self.recorders:
            if recorder.run_dir == self.path:
                return recorder.summary
        parts = {r.run_dir.name: {"status": r.status, **r.summary} for r in self.recorders}
        return {**self.fields, **parts}
