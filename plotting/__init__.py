"""Pictures drawn with Pillow alone: labelled figures (plots.py), a run's curves (curves.py)."""
