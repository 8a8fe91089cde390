"""Stages train_stage1 and train_stage2: config.py (the `train` section), batches.py, checkpoints.py,
model_files.py (the saved prompt modules), loop.py (the optimisation loop) and stage.py (the stage entry)."""
