"""Fine-tuning a pretrained model: supervised prompt / completion data (`sft_data`), its config and mode."""
