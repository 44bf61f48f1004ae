"""An export's plan, its targets, its progress and its estimate (the run: core/exporter.py)."""
