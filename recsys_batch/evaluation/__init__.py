"""Offline evaluation: metrics, the backtest, candidate recall and the report."""
