"""Load generation: workloads (real traces, synthetic presets), arrival processes,
token-id prompts and the dummy-model kit; see docs/workloads.md."""
