"""Suite-wide pytest setup: markers (the suite is run as `python -m pytest tests` from the repository root),
and the SLURM tests' clean-up."""
import pytest
from slurm_utils import cancel_test_jobs


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slurm: needs a running SLURM cluster (skipped when none answers)")
    config.addinivalue_line("markers", "slow: longer end-to-end tests")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; slurm/gpu-check.sh runs them)")


@pytest.fixture(autouse=True)
def _no_jobs_outlive_a_slurm_test(request):
    """After a test marked slurm, its grid's jobs that are still on the cluster are cancelled."""
    yield
    if request.node.get_closest_marker("slurm") is not None:
        cancel_test_jobs()
