"""DPO with TRL: ViT frozen, one pass, vision features computed once per image (see ``postvl.dpo.main``)."""
