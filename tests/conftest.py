import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engine_fixtures import record_offline_run, write_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def offline_run(tmp_path_factory, tiny_model_dir):
    """One traced offline vLLM run, shared by every test that reads it."""
    return record_offline_run(tmp_path_factory.mktemp("offline"), tiny_model_dir)


@pytest.fixture(scope="session")
def faulty_offline_run(tmp_path_factory, tiny_model_dir):
    """The same run with every recorder append raising inside servescope."""
    return record_offline_run(tmp_path_factory.mktemp("faulty"), tiny_model_dir, SERVESCOPE_INJECT_FAULTS="1")


@pytest.fixture(scope="session")
def large_budget_offline_run(tmp_path_factory, tiny_model_dir):
    """The same workload with a 4x larger chunked-prefill token budget (max_num_batched_tokens 512)."""
    return record_offline_run(tmp_path_factory.mktemp("budget512"), tiny_model_dir, token_budget=512)
