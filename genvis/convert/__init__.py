"""Import and export of public checkpoints in Hugging Face layouts.

`hf_gpt` converts GPT-2 (`GPT2LMHeadModel`) and GPT-1 (`OpenAIGPTLMHeadModel`) state dicts
and directories to genvis GPT parameters and back, exactly; `hf_files` reads and writes HF
model folders (config.json + safetensors) for any architecture; `lm_workdir` writes imported
weights as a genvis workdir that sampling, evaluation and fine-tuning start from. Parity with
the transformers models is tested in tests/convert/.

Submodules are imported by name (`from genvis.convert import hf_gpt`), so that
`python -m genvis.convert.hf_gpt` runs a module the package has not imported yet.
"""
