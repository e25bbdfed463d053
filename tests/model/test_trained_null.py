"""A trained model's null p-values are uniform (issue: the PL U-Net diffusion model)."""

import numpy as np
import pytest
from scipy import stats

from medsi.data import synthetic_images
from medsi.model import AnomalyScore, DDIMReconstruction
from medsi.model.training import train_unet
from medsi.si import Isotropic, LineEvaluator, SelectiveTest, check_piecewise_linear

TINY = {
    "model": {"channels": [8, 16], "time_embed_dim": 16},
    "training": {"batch_size": 32, "learning_rate": 1e-3},
}


@pytest.fixture(scope="module")
def trained_score():
    rng = np.random.default_rng(100)
    normals, _ = synthetic_images("iid", 8, 256, rng)
    unet, record = train_unet(TINY, normals, epochs=8, seed=0, progress=False)
    assert record["losses"][-1] < record["losses"][0]
    return AnomalyScore(DDIMReconstruction(unet, seed=0)).double().eval()


@pytest.mark.slow
def test_trained_tiny_model_gives_uniform_null_p_values(trained_score):
    check_piecewise_linear(trained_score)
    rng = np.random.default_rng(7)
    # threshold fixed from separate null images before any test image is drawn
    calibration, _ = synthetic_images("iid", 8, 64, rng)
    threshold = float(np.quantile(LineEvaluator(trained_score, 0.0).score_map(calibration), 0.97))
    test = SelectiveTest(trained_score, threshold, covariance=Isotropic(1.0))
    p_full, p_oc = [], []
    while len(p_full) < 200:
        x, r = rng.standard_normal((8, 8)), rng.standard_normal((8, 8))
        if not test.select(x).any():
            continue
        # p known to within 1e-3 (honest bounds), far below what a KS test of 200 can see
        res = test.run(x, r, batch_size=64, termination="precision", precision=1e-3)
        assert res.p_bounds_full[1] - res.p_bounds_full[0] < 1e-3
        p_full.append(res.p_full)
        p_oc.append(res.p_oc)
    assert stats.kstest(p_full, "uniform").pvalue > 0.01
    assert stats.kstest(p_oc, "uniform").pvalue > 0.01
