"""Interpreter start-up hook, imported by ``dyncot_plugin.pth`` in every Python process.

It must stay cheap: it imports nothing but ``os``, ``sys`` and ``importlib`` machinery (no torch, transformers or
llamafactory), and only registers one meta-path finder per seam module. When ``llamafactory.train.tuner`` is
imported for the first time (by ``llamafactory-cli train`` in the main process, or by ``llamafactory/launcher.py``
in each torchrun worker), ``llamafactory.chat.chat_model`` (``llamafactory-cli chat``, ``api``, ``webchat``) or
``llamafactory.chat.hf_engine`` (their Hugging Face engine), the finder lets the module load normally and then calls
:func:`dyncot_plugin.patches.apply_patches` for that seam.

``DYNCOT_DISABLE=1`` turns the hook off entirely.
"""

import os
import sys

SEAM_MODULES = ("llamafactory.train.tuner", "llamafactory.chat.chat_model", "llamafactory.chat.hf_engine",
                "llamafactory.webui.interface")
"""= the keys of :data:`dyncot_plugin.patches.SEAMS`."""


def is_disabled() -> bool:
    return os.environ.get("DYNCOT_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


class _PatchAfterExecLoader:
    """Wraps the real loader of the target module; runs the plugin's patches right after the module executes."""

    def __init__(self, loader, seam: str):
        self._loader, self._seam = loader, seam

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        if is_disabled():
            return
        from dyncot_plugin.patches import apply_patches

        apply_patches(self._seam)

    def __getattr__(self, name):  # get_code, get_source, is_package ... for tools that inspect the loader
        return getattr(self._loader, name)


class SeamImportHook:
    """Meta-path finder that only answers for one seam module and removes itself once used."""

    def __init__(self, seam: str):
        self.seam = seam

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.seam:
            return None
        sys.meta_path.remove(self)  # one shot: also avoids recursing into ourselves below
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchAfterExecLoader(spec.loader, self.seam)
        return spec


def register() -> None:
    if is_disabled():
        return
    hooked = {finder.seam for finder in sys.meta_path if isinstance(finder, SeamImportHook)}
    for seam in SEAM_MODULES:
        if seam not in sys.modules and seam not in hooked:
            sys.meta_path.insert(0, SeamImportHook(seam))


register()
