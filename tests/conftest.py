"""Shared fixtures: tiny diffusers pipelines saved to disk, offline.

Tests never reach the Hugging Face hub: ``HF_HUB_OFFLINE`` is set before anything imports
``huggingface_hub`` (which reads it once, at import time), so a hub id fails at once instead of
retrying for about 23 seconds.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def library_loggers():
    """Import diffusers and transformers once, before any test's ``capsys`` replaces ``sys.stderr``.

    Their log handlers keep the ``sys.stderr`` of their first import. The entry scripts import them
    only after parsing their flags; imported first inside a test, the handlers would write to that
    test's closed capture later ("--- Logging error ---").
    """
    import diffusers  # noqa: F401
    import transformers  # noqa: F401


@pytest.fixture(scope="session")
def tiny_dit_dir(tmp_path_factory) -> str:
    """A saved tiny ``DiTPipeline`` directory (``paratAA.pipelines.tiny``), written once per test session."""
    from paratAA.pipelines.tiny import save_tiny_pipeline

    return save_tiny_pipeline("dit", tmp_path_factory.mktemp("tiny-dit") / "pipeline")


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> str:
    """A saved tiny ``StableDiffusionPipeline`` directory (``paratAA.pipelines.tiny``), written once per test session."""
    from paratAA.pipelines.tiny import save_tiny_pipeline

    return save_tiny_pipeline("sd", tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture
def single_thread():
    """Run a test with one torch thread (restored afterwards).

    Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    spinning threads made them 20-50x slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
