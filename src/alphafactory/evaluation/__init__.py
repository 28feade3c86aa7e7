"""Scoring what the models forecast: metrics, the evaluate and cv stages, explanations, the HTML
report and the leakage audit. Models and serving never import this package (tests/test_layers.py)."""
