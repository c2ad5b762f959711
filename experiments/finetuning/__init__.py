"""Fine-tuning SmolLM2-135M (full, LoRA, Q-LoRA) with AdamW or AdamW+SGG.

``python -m experiments.finetune`` (`cli`) runs the sweep (`sweep`: every
arm tuned on dev, then its seeds on test), one run at a time (`run`), from
the data (`data`: BBC News splits, lm windows and cls prompts), the models
(`model`: fresh f32 or Q-LoRA copies of the pretrained weights), the
optimizers and steps (`step`), the scoring (`eval`) and the logs (`log`);
`aggregate`, `report` and `plots` turn the run JSONs into the summary.
"""
