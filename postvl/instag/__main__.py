"""``accelerate launch -m postvl.instag IN --out OUT [--backend llm --model M]``: see postvl.instag.main."""

import sys

from postvl.instag.main import main

sys.exit(main())
