"""What several experiments share: data, the model, LoRA, records, CLI types.

* data: `corpora` (offline corpora and their fixed split), `tokenizer`
  (byte and BPE tokenizers, tokenized splits, the disk cache), `batches`
  (training and evaluation batches, classification rows);
* the model: `model_config` (shapes, presets, sharding rules), `model` (the
  NNX LLaMA), `generate` (greedy decoding), `gguf` (SmolLM2-135M from its
  GGUF file, int8 layers), `lora` (LoRA and Q-LoRA adapters);
* `records` (the provenance of every run JSON) and `cli` (argparse types).
"""
