"""What a training run needs beyond the model: the recipe of a stage (recipe.py), checkpoints
(checkpoint.py), evaluation (evaluate.py), DDP (distributed.py), and how programs end (cli.py)."""
