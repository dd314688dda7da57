"""Shared pytest fixtures. Forces Hugging Face offline mode before anything imports transformers."""

import copy
import os

import pytest

# Set at import, before any test module imports transformers / huggingface_hub, which read these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="session")
def project_folder(tmp_path_factory):
    """Every test runs with a private project folder (argbench.paths): nothing a test writes by default (MLflow
    store, Optuna storage, run folders) lands in this checkout's mlruns/."""
    previous = os.environ.get("ARGBENCH_PROJECT")
    os.environ["ARGBENCH_PROJECT"] = str(tmp_path_factory.mktemp("project"))
    yield
    if previous is None:
        os.environ.pop("ARGBENCH_PROJECT", None)
    else:
        os.environ["ARGBENCH_PROJECT"] = previous


@pytest.fixture(scope="session")
def tiny_encoder():
    """(model, tokenizer) of "tiny-random-bert", loaded once per session, in eval mode. Do not modify it in a test;
    use `fresh_tiny_encoder` for a copy you may train."""
    from argbench.model.encoders import load_encoder

    return load_encoder("tiny-random-bert")


@pytest.fixture
def fresh_tiny_encoder(tiny_encoder):
    """A private deep copy of the session's tiny model (same weights) with the shared tokenizer."""
    model, tokenizer = tiny_encoder
    return copy.deepcopy(model), tokenizer


def single_torch_thread():
    """Generator for a module-scoped autouse fixture: tiny models run fastest on one thread, and far more steadily
    when other processes share the CPU cores. Module-scoped so that it also holds while module fixtures train:
    results on CPU depend on the thread count. Use as
    ``one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)``."""
    import torch  # imported here: this file sets the offline variables before anything heavy is imported

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
