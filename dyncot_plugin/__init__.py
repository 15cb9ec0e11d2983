"""dyncot-plugin: Dynamic Chain-of-Thought fine-tuning for LLaMA-Factory.

After ``pip install dyncot-plugin`` nothing needs importing: a ``.pth`` file activates the plugin whenever
``llamafactory.train.tuner`` is imported (see :mod:`dyncot_plugin._bootstrap`). People who call
``llamafactory.train.tuner.run_exp()`` from their own Python with ``DYNCOT_DISABLE`` unset get it the same way;
:func:`install` is the explicit form.
"""

__version__ = "0.1.0"


def install() -> None:
    """Apply the plugin's patches to LLaMA-Factory now (idempotent). Ignores ``DYNCOT_DISABLE``: an explicit call wins."""
    from dyncot_plugin.patches import apply_patches

    apply_patches()


__all__ = ["__version__", "install"]
