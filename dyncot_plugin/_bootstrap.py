"""Interpreter start-up hook, imported by ``dyncot_plugin.pth`` in every Python process.

It must stay cheap: it imports nothing but ``os``, ``sys`` and ``importlib`` machinery (no torch, transformers or
llamafactory), and only registers a meta-path finder. When ``llamafactory.train.tuner`` is imported for the first
time (by ``llamafactory-cli train`` in the main process, or by ``llamafactory/launcher.py`` in each torchrun worker),
the finder lets the module load normally and then calls :func:`dyncot_plugin.patches.apply_patches`.

``DYNCOT_DISABLE=1`` turns the hook off entirely.
"""

import os
import sys

TARGET_MODULE = "llamafactory.train.tuner"


def is_disabled() -> bool:
    return os.environ.get("DYNCOT_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


class _PatchAfterExecLoader:
    """Wraps the real loader of the target module; runs the plugin's patches right after the module executes."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        if is_disabled():
            return
        from dyncot_plugin.patches import apply_patches

        apply_patches()

    def __getattr__(self, name):  # get_code, get_source, is_package ... for tools that inspect the loader
        return getattr(self._loader, name)


class TunerImportHook:
    """Meta-path finder that only answers for ``llamafactory.train.tuner`` and removes itself once used."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot: also avoids recursing into ourselves below
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchAfterExecLoader(spec.loader)
        return spec


def register() -> None:
    if is_disabled() or TARGET_MODULE in sys.modules:
        return
    if not any(isinstance(finder, TunerImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, TunerImportHook())


register()
