"""Teacher CoT generation (``dyncot-data gen-cot``): prompts, reply validation, a resumable cache and an
OpenAI-compatible client with retries. See docs/teacher.md."""
