"""Development and test helpers: the throwaway SLURM cluster, the tiny model and the datasets.

Used by tests, ``make demo`` and ``bench/``; never by hpcgen itself.
"""
