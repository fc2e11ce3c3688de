"""What a training run needs beyond the model: checkpoints (checkpoint.py), the out-dir's lock and
guard (rundir.py), evaluation (evaluate.py), DDP (distributed.py), how programs read numbers and
end (cli.py), and analyze.py's measures (measures.py)."""
