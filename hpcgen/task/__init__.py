"""What runs inside a SLURM task: the worker loop, the vLLM adapter, multi-node, the process guard."""
