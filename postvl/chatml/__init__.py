"""The dataset builder: format adapters (``formats``), validation and grounding rescale (``validate``), the build
loop (``build``, ``postvl build``) and byte-exact rendering with label spans (``render``)."""
