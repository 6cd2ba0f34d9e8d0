"""What the training stages share: configuration, data mixing, the record encoder, model preparation, the LM-head
loss path, outputs.

``postvl.sft`` and ``postvl.dpo`` both import this package and never each other.
"""
