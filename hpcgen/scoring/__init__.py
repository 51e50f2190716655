"""Grading merged answers: the graders (verl's rules, math-verify, custom), metrics, the score command. No torch,
no vllm."""
