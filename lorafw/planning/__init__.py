"""Planning a run before it starts: steps, buckets and the guide's advice (plan.py), and the GPU memory a run
needs with the settings that fit a card (vram.py, from vram_calibration.json). No torch."""
