"""What runs on the login node: plan, launch (submitit), submit/resume/cancel, status, merge.

Nothing here imports torch or vllm; the one tie to ``task`` is the launcher naming the task's entry point."""
