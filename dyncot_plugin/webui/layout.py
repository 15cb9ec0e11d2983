"""How the plugin's elements get into LlamaBoard's tabs without copying LlamaBoard's code.

LlamaBoard builds each tab in one function (``create_train_tab(engine)`` ...) that creates its elements and wires
their events at once. The plugin wraps that function and, around the call:

* :func:`extra_inputs`: the tab's events read ``engine.manager.get_base_elems()`` plus the tab's own elements; for the
  duration of the call that set also holds the plugin's fields (created unrendered beforehand), so Preview, Save,
  Load and Start send and receive them like LlamaBoard's own fields;
* :func:`place_before` / :func:`place_after`: the plugin's group, rendered after the call, is moved next to the
  element it belongs beside (the Dynamic CoT group before the buttons, the CoT-share plot under the loss plot);
* :func:`event_of`: an event whose inputs are a fixed list (the chat box's reply) is found by its function, to add
  the two think fields to what it sends.

These touch Gradio's layout tree (``children``/``parent``) and event table (``fns``) as Gradio itself builds them
(Gradio 5; LlamaBoard 0.9.5 allows 4.38–5.50, tested on 5.50.0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def extra_inputs(manager: Any, components: Iterable[Any]) -> Iterator[None]:
    """While the block runs, ``manager.get_base_elems()`` also returns ``components``."""
    original = manager.get_base_elems
    extra = set(components)
    manager.get_base_elems = lambda: original() | extra
    try:
        yield
    finally:
        del manager.get_base_elems  # the instance attribute: the class's method again


def _move(block: Any, sibling: Any, offset: int) -> None:
    if block.parent is not None:
        block.parent.children.remove(block)
    parent = sibling.parent
    parent.children.insert(parent.children.index(sibling) + offset, block)
    block.parent = parent


def place_before(block: Any, sibling: Any) -> None:
    """Move the rendered ``block`` right before ``sibling`` (in ``sibling``'s parent)."""
    _move(block, sibling, 0)


def place_after(block: Any, sibling: Any) -> None:
    """Move the rendered ``block`` right after ``sibling`` (in ``sibling``'s parent)."""
    _move(block, sibling, 1)


def event_of(fn: Callable) -> Any:
    """The event (Gradio's ``BlockFunction``) of the Blocks being built whose function is ``fn``."""
    from gradio.context import get_blocks_context

    found = [block_fn for block_fn in get_blocks_context().fns.values() if block_fn.fn == fn]
    if len(found) != 1:
        raise RuntimeError(f"dyncot-plugin: expected one LlamaBoard event running {fn!r}, found {len(found)}")
    return found[0]


def add_inputs(fn: Callable, components: list[Any], replacement: Callable) -> None:
    """The event running ``fn`` also sends ``components`` (after its own inputs) and runs ``replacement`` instead,
    which receives them as its last arguments."""
    block_fn = event_of(fn)
    block_fn.inputs = [*block_fn.inputs, *components]
    block_fn.fn = replacement


__all__ = ["add_inputs", "event_of", "extra_inputs", "place_after", "place_before"]
