"""Pictures drawn with Pillow: a run's curves (curves.py), analyze.py's figures (figures.py)."""
