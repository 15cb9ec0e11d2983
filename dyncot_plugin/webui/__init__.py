"""Dynamic CoT in LlamaBoard (``llamafactory-cli webui``) and ``llamafactory-cli webchat``.

Wired in by :mod:`dyncot_plugin.patches` (seam ``llamafactory.webui.interface``, one patch per LlamaBoard name) when
the web UI is built; ``DYNCOT_DISABLE=1`` leaves LlamaBoard untouched.

* ``fields``: the form fields, made from :class:`~dyncot_plugin.config.DynCotArguments` (a key added later appears
  without an edit here); a field left at its default writes nothing anywhere.
* ``locales``: the labels in LlamaBoard's five languages (``LOCALES`` entries).
* ``layout``: how the plugin's elements join LlamaBoard's tabs and events.
* ``train``: the Train tab's "Dynamic CoT" group; the CoT share against its target and γ per logged step beside the
  loss curve, and the per-epoch flip share.
* ``evaluate``: the Evaluate & Predict tab's think mode (one per Start).
* ``chat``: the Chat tab's think mode and threshold per message; each reply's ``think_prob`` and decision.
* ``runner``: the fields into the recipe, the recipe through :mod:`dyncot_plugin.validate` before anything starts,
  defaults out of saved configurations and back in when one without them loads.
"""
