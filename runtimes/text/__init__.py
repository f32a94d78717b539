"""The text runtime: our own torch LLM engine for the Llama / Qwen2 family."""
