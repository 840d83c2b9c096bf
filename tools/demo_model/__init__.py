"""The built-in demo model's world of coloured shapes (``shapes``: drawing and a classifier) and its
training script (``train``)."""
