"""Suite-wide pytest setup: markers (the suite is run as `python -m pytest tests` from the repository root)."""


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slurm: needs a running SLURM cluster (skipped when none answers)")
    config.addinivalue_line("markers", "slow: longer end-to-end tests")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one; slurm/gpu-check.sh runs them)")
