"""``accelerate launch -m postvl.dpo --config ...``: see postvl.dpo.main."""

import sys

from postvl.dpo.main import main

sys.exit(main())
