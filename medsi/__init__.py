"""medsi: valid p-values for anomalies found by a diffusion model in brain MRI."""

__version__ = "0.1.0"

__all__ = ["__version__"]
