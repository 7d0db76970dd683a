"""The trained patches model (loads offline like any model directory, samples exactly through solve and
through sample(pipe)) and its training script (seeded, resumable, exported with a card)."""

import json

import numpy as np
import pytest
import torch

from paratAA import sample_noise, sequential, solve
from paratAA.cli.models import load_dit
from paratAA.pipelines.defaults import trained_model_dir
from paratAA.pipelines.runner import class_conditioning

pytestmark = pytest.mark.usefixtures("single_thread")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def patches():
    return load_dit("patches", device="cpu", sampler="dpm++2m")


def test_loads_offline_as_an_unconditional_rgb_pipeline_directory(patches):
    folder = trained_model_dir("patches")
    for name in ("model_index.json", "README.md", "loss.csv", "samples.png", "training.json"):
        assert (folder / name).is_file(), name
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 20e6  # the repository keeps model files small
    patches.make_schedule(10)
    assert patches.pipe.vae is None and patches.latent_shape == (3, 32, 32) and patches.adapter.num_classes == 1
    images = patches.decode(torch.zeros(1, 3, 32, 32))
    assert images[0].mode == "RGB" and images[0].size == (32, 32)


def test_dpm_solve_converges_to_the_diffusers_step_loop(patches):
    """DPM-Solver++ 2M, 20 steps, unguided: the default solve against diffusers' own multistep loop."""
    schedule = patches.make_schedule(20)
    conditioning = class_conditioning([0, 0], 1.0)
    noise = patches.sample_noise(0, 2, 20)
    result = solve(patches.eps_fn(conditioning), schedule, noise, window_size=20)
    oracle = patches.sequential_reference(noise, conditioning, 0.0, seed=0)
    assert result.converged and result.iterations < 20
    assert float((result.samples - oracle).abs().max()) < 2e-3


def test_ddim_solve_at_a_tight_tolerance_equals_sequential(patches):
    runner = load_dit("patches", device="cpu")  # DDIM, DiT's respacing
    schedule = runner.make_schedule(25, 0.0)
    eps_fn = runner.eps_fn(class_conditioning([0, 0], 1.0))
    noise = sample_noise(0, 2, 25, runner.latent_shape)
    result = solve(eps_fn, schedule, noise, tol1=1e-6, tol2=0.0)
    assert result.converged and result.iterations < 25
    assert float((result.samples - sequential(eps_fn, schedule, noise)[:, 0]).abs().max()) < 1e-4


def test_sample_pipe_matches_the_pipelines_own_call():
    """A pixel-space DiTPipeline (vae=None) runs its own call through sample(pipe), its decode the identity.

    The model ships DDPM, a stochastic sampler: DiTPipeline draws x[T] from the call's generator but
    each step's noise from torch's global generator (its step gets no generator), so both calls seed it.
    """
    from diffusers import DiTPipeline

    from paratAA.pipelines import adapter_for, prepare, sample

    pipe = DiTPipeline.from_pretrained(str(trained_model_dir("patches")), vae=None)
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"
    call = dict(class_labels=[0, 0], guidance_scale=1.0, num_inference_steps=15, output_type="np")
    torch.manual_seed(5)
    ours = sample(pipe, **call, generator=torch.Generator().manual_seed(3), window_size=15)
    assert pipe.vae is None  # the stand-in decoder was lent for the call only
    torch.manual_seed(5)
    with adapter_for(pipe).full_call():  # the pipeline's own loop and its own [-1, 1] -> [0, 1] mapping
        theirs = pipe(**call, generator=torch.Generator().manual_seed(3)).images
    assert ours.images.shape == theirs.shape == (2, 32, 32, 3) and ours.result.converged
    assert np.abs(ours.images - theirs).max() < 5e-3
    prepared = prepare(pipe, **call, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(prepared.decode(ours.result.samples), ours.images, atol=1e-6)


def test_training_is_seeded_and_a_resumed_run_continues_the_same_stream(tmp_path):
    from training.train_patches import load_ema, main

    common = ["--batch_size", "4", "--warmup", "2", "--log_every", "1", "--keep_every", "0", "--no_export"]
    main(["--steps", "4", "--checkpoint_dir", str(tmp_path / "straight"), *common])
    main(["--steps", "2", "--checkpoint_dir", str(tmp_path / "resumed"), *common])
    main(["--steps", "4", "--checkpoint_dir", str(tmp_path / "resumed"), *common])  # continues from step 2
    straight, resumed = (load_ema(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    rows = (tmp_path / "resumed" / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,smoothed_loss,seconds" and len(rows) == 5  # steps 1-4, none repeated


def test_export_writes_a_loadable_pipeline_with_card_and_samples(tmp_path):
    from training.train_patches import main

    checkpoints, model = tmp_path / "checkpoints", tmp_path / "model"
    main(["--steps", "2", "--batch_size", "4", "--log_every", "1", "--checkpoint_dir", str(checkpoints),
          "--output_dir", str(model), "--quality", str(tmp_path / "absent.json")])
    facts = json.loads((model / "training.json").read_text())
    assert facts["steps"] == 2 and facts["command"] == "python -m training.train_patches --steps 2"
    card = (model / "README.md").read_text()
    assert "2 steps of batch 4" in card and "Quality against steps" not in card  # no quality result given
    runner = load_dit(str(model), device="cpu")
    assert runner.adapter.num_classes == 1 and (model / "samples.png").is_file()


def test_the_dit_script_samples_it_unconditionally(tmp_path, capsys):
    import parallel_dit
    from paratAA.cli.process import run_cli

    status = run_cli(parallel_dit.main, ["--model_path", "patches", "--num_samples", "2", "--timesteps", "6",
                                         "--sampler", "dpm++2m", "--output_path", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0 and "single class: it samples unconditionally (--cfg_scale 4 not used)" in out
    [run] = [p for p in tmp_path.iterdir() if p.is_dir()]
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["class_labels"] == [0, 0] and config["resolved"]["guidance_scale"] == 1.0
