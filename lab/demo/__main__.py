"""`python -m lab.demo` (what `make demo` runs): the story of one grant, with real packets."""

import sys

from lab.demo.story import main

sys.exit(main())
