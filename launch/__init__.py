"""The training job: entry point (train.py), start-up checks, run directories, progress, plots."""
