"""Gradio user interface."""
