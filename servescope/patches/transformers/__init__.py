"""Hooks for Hugging Face transformers' continuous batching (``generate_batch``, ``ContinuousBatchingManager``,
``transformers serve --continuous-batching``), recording into the same tables, with the same names and units,
as the vLLM hooks. ``instrumentor`` turns them on; docs/how-it-works.md says where each one sits."""
