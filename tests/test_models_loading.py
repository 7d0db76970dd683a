"""Model locations: local vs hub without touching the network, one-line errors naming the argument."""

import time

import pytest

from paratAA.pipelines.locations import ModelLoadError, load_pretrained, resolve_location


def test_existing_paths_are_local(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    assert resolve_location(str(tmp_path), "model_path") == ("local", str(tmp_path))
    assert resolve_location(str(tmp_path / "model.pt"), "model_path") == ("local", str(tmp_path / "model.pt"))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="model_path: .* is an empty file"):
        resolve_location(str(tmp_path / "empty.pt"), "model_path")


@pytest.mark.parametrize("location", ["facebook/DiT-XL-2-256", "stable-diffusion-v1-5/stable-diffusion-v1-5", "gpt2"])
def test_repo_ids_go_to_the_hub(location):
    assert resolve_location(location, "model_path") == ("hub", location)


@pytest.mark.parametrize("location", ["/no/such/dir", "./missing", "../missing", "~/missing-model-xyz",
                                      "DiT-XL-2-256x256.pt", "weights/model.safetensors"])
def test_missing_local_looking_paths_fail_at_once(location):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=f"vae_path: local path '{location}' does not exist") as info:
        resolve_location(location, "vae_path")
    assert time.perf_counter() - start < 0.5
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("location", ["", "  ", "a/b/c", "owner/../x", "bad name"])
def test_malformed_locations_are_rejected(location):
    with pytest.raises(ModelLoadError, match="model_path"):
        resolve_location(location, "model_path")


def test_load_failures_become_one_line_model_load_errors():
    class Failing:
        @staticmethod
        def from_pretrained(location, **kwargs):
            raise OSError(f"{location} does not appear to have a file named config.json.\nmore detail")

    with pytest.raises(ModelLoadError) as info:
        load_pretrained(Failing, "owner/name", "hub", "model_path", "DiT pipeline")
    message = str(info.value)
    assert message.startswith("model_path: could not load a DiT pipeline from 'owner/name' as a hub repo id")
    assert "config.json" in message and "\n" not in message
    assert isinstance(info.value, ValueError) and isinstance(info.value.__cause__, OSError)
