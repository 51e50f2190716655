"""The job: typed spec, presets, KEY=VALUE overrides. Used on both machines; imports no torch, no vllm."""
