"""Generation requests and the pipelines that run them."""
