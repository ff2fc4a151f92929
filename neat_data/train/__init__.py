"""The bundled NEAT trainer: losses (loss.py), trainer input (data.py), the policy forward and save (forward.py), the loop (trainer.py)."""
