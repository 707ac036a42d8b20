"""SLURM: the launcher (``launcher.py``, ``SlurmLauncher``) and the pure parts it is built from.

``commands.py`` builds every sbatch/squeue/sacct/scancel argv from validated values and
parses their output; ``states.py`` reads a job's state from what SLURM shows (pure);
``gpus.py`` is a partition's GPUs from one ``sinfo`` call (the login node we reach has
none of its own). This file imports nothing, so the pure modules load without the launcher.
"""
