"""Shared pytest fixtures. Forces Hugging Face offline mode before anything imports transformers."""

import copy
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

# Set at import, before any test module imports transformers / huggingface_hub, which read these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

# Stop-signal tests expect the handlers an interactive Python starts with; a shell that starts pytest in the background
# (`make test &`) hands it SIGINT ignored, so they are put back first.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
def empty_mlflow_db(tmp_path_factory):
    """An MLflow SQLite store with its tables made, once: creating them takes seconds, copying the file does not."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


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


# --- a throwaway PostgreSQL server (multi-worker tests of search and study) ---------------------------------------

PG_PASSWORD = "s3cret-pw"


def postgres_bin() -> Path | None:
    """Folder of initdb / pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("pg_ctl")
    found = [Path(on_path)] if on_path else sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found and (found[-1].parent / "initdb").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on a free loopback port (password auth), stopped and deleted at the end.
    PostgreSQL refuses to run as root, so under root it runs as the `postgres` user in a folder that user owns."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install them (Debian: apt-get install "
                    "postgresql) to run the multi-worker tests")
    root = Path(tempfile.mkdtemp(prefix="argbench-pg-"))
    as_user: list[str] = []
    (root / "pwfile").write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no `postgres` user to run the PostgreSQL server as")
        for path in (root, root / "pwfile"):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "argbench", "--pwfile",
                    str(root / "pwfile"), "--auth", "scram-sha-256", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
                    f"-p {port} -c listen_addresses=127.0.0.1 -k {root}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://argbench:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
