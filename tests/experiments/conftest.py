import pytest

from medsi.experiments import SyntheticModels

TINY_RECIPE = {
    "model": {"channels": [8, 16], "time_embed_dim": 16},
    "training": {"batch_size": 32, "learning_rate": 1e-3},
}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny 8x8 iid and corr models trained for a few epochs (enough to be a real model)."""
    models = SyntheticModels(
        tmp_path_factory.mktemp("models"), TINY_RECIPE, n_images=80, epochs=3, seed=0
    )
    for kind in ("iid", "corr"):
        models.ensure(kind, 8, progress=False)
    return models
