"""Make PyPI's torchvision importable beside a CPU-only torch build.

PyPI's torchvision wheels are CUDA builds. Next to ``torch==X+cpu`` their compiled ops cannot load, and
``torchvision/_meta_registrations.py`` then calls ``torch.library.register_fake("torchvision::nms")`` for an operator
that was never defined, so ``import torchvision`` dies with ``RuntimeError: operator torchvision::nms does not
exist`` (https://github.com/pytorch/pytorch/issues/122494,
https://github.com/pytorch/pytorch/issues/157648). The other registrations in that file are
already guarded by ``torchvision.extension._has_ops()``; this script applies the same guard to the two unguarded
``register_fake`` calls. Only torchvision's pure-Python transforms are used (by the Qwen2-VL image and video
processors), and those work once the import succeeds.

Idempotent: running it twice changes nothing. Usage: ``python scripts/fix_cpu_torchvision.py`` inside the venv.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

MARKER = "# postvl: guarded register_fake"
GUARD = f"""
{MARKER}
def _register_fake_if_ops(name):
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name)
    return lambda fn: fn

"""


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed: nothing to fix")
        return 0
    path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if MARKER in text:
        print(f"{path}: already fixed")
        return 0
    if "@torch.library.register_fake(" not in text:
        print(f"{path}: no unguarded register_fake, nothing to fix")
        return 0
    anchor = "@functools.lru_cache(None)\ndef get_meta_lib():"
    if anchor not in text:
        print(f"{path}: unexpected layout, refusing to patch", file=sys.stderr)
        return 1
    text = text.replace("@torch.library.register_fake(", "@_register_fake_if_ops(")
    text = text.replace(anchor, GUARD.lstrip("\n") + "\n" + anchor, 1)
    path.write_text(text)
    print(f"{path}: guarded register_fake with torchvision.extension._has_ops()")
    return 0


if __name__ == "__main__":
    sys.exit(main())
