import numpy as np
import pytest



def random_case(shape, seed=0, sigma=25.0):
    """A smooth random 'clean' image in 0..255 and its noisy version."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    t = 128 + 60 * np.sin(xx / 3.0 + rng.uniform(0, 6)) * np.cos(yy / 4.0) + 10 * rng.normal(size=shape)
    return t + sigma * rng.normal(size=shape), t


def perturbed_params(model, seed=0, scale=0.3):
    """Initial parameters with every group randomly perturbed (so no symmetry hides a bug)."""
    rng = np.random.default_rng(seed)
    p = model.unpack(model.init_params().copy())
    out = {}
    for name, v in p.items():
        size = np.abs(v).mean() if np.abs(v).mean() > 0 else 1.0
        out[name] = v + scale * size * rng.normal(size=v.shape) if name == "filters" \
            else v + scale * rng.normal(size=v.shape)
    return model.pack(out)


@pytest.fixture
def case():
    return random_case


@pytest.fixture
def perturb():
    return perturbed_params
