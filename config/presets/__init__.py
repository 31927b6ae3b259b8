"""Preset specs, shipped inside the reasoning_trainer distribution as reasoning_trainer.preset_files."""
