import pytest
import torch

from medsi.pipeline.default_bundle import build_mri_bundle


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # The engine's test models are tiny: one thread avoids oversubscribing CI's two cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY_MRI_RECIPE = {
    "model": {"channels": [4, 8], "time_embed_dim": 8},
    "diffusion": {"start_timestep": 460, "num_steps": 2, "eta": 1.0, "seed": 0},
    "score": {"kernel_size": 3, "signed": True},
    "training": {"epochs": 2, "batch_size": 32, "learning_rate": 1e-3, "seed": 0},
    "covariance": {"kind": "isotropic"},
}


@pytest.fixture(scope="session")
def tiny_mri_bundle(tmp_path_factory):
    """A tiny MRI bundle from three 2 mm phantoms (one trained on, two held out): plumbing."""
    from medsi.model import load_bundle

    folder = tmp_path_factory.mktemp("mri") / "bundle"
    build_mri_bundle(
        folder,
        n_subjects=3,
        heldout_subjects=2,
        recipe=TINY_MRI_RECIPE,
        threshold_quantile=0.995,
        phantom_spacing_mm=2.0,
        progress=False,
        log=lambda _: None,
    )
    return load_bundle(folder)
