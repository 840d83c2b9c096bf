"""Atelier: a Stable Diffusion studio served as a Gradio web UI."""
