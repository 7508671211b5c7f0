"""The artifact-evaluation kit: run every figure's cells (resumable, locked, time-limited,
on one GPU, every local GPU or a Slurm cluster), check fresh logs against the backup logs,
and report the environment.

Nothing here imports torch: ``check`` runs in the plotting venv (numpy, matplotlib,
tabulate) and the runner only starts each figure's ``run_single.sh``.
"""
