"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests use tiny models, which gain nothing from intra-op threads; on the 2-core CI machine extra threads
    only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A decoded-image cache folder shared by one test module's train.py runs (test_train, test_protocol)."""
    return tmp_path_factory.mktemp("cache")
