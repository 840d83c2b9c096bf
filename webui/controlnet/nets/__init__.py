"""The annotator networks, with the layer names of the files artists already have (lllyasviel/Annotators).

Each module builds one network whose ``state_dict`` keys and shapes are exactly those of the original file,
so a file loads with ``load_state_dict(strict=True)``. Weights come from ``annotator_store`` (restricted
loading, never a pickle that runs code); nothing here reads a file or downloads anything.
"""


class WrongWeights(ValueError):
    """The tensors given to a network's builder are not that network's; the message says what is amiss."""
