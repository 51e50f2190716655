"""Grading merged answers: scorers, metrics, the score command. No torch, no vllm."""
