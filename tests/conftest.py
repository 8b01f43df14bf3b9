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


@pytest.fixture
def no_hub(monkeypatch):
    """Any attempt to fetch timm weights fails the test (tests must never download); returns timm's own
    ``create_model`` for the tests that stand in for the hub."""
    import timm

    real = timm.create_model

    def guarded(name, pretrained=False, **kw):
        assert not pretrained, f"test tried to download {name}"
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", guarded)
    return real
