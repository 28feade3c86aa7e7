"""Forecasting from a trained bundle: building and verifying it, loading it, forecasting from raw
bars, and writing forecasts to SQL. Never imports PyTorch or scikit-learn, so a forecasting
process starts in a fraction of a second (tests/test_layers.py)."""
