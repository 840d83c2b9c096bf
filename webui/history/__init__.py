"""The History tab's logic (no gradio): an index of the pictures in the outputs folder (index), their thumbnails
(thumbnails), and a trash folder with restore (trash). Pictures' metadata comes from their files (metadata)."""
