"""hpcgen: run a trained LLM over a prompt dataset at SLURM cluster scale.

Login-node modules (cli, config, plan, launch, state, merge, score) never import torch or vllm;
only ``hpcgen.task.engine`` does, lazily, inside a task.
"""

__version__ = "0.1.0"
