"""``accelerate launch -m postvl.sft --config ...``: see postvl.sft.main."""

import sys

from postvl.sft.main import main

sys.exit(main())
