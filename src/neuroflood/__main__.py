"""``python -m neuroflood`` (what ``torchrun -m neuroflood`` runs)."""

import sys

from .cli import main

sys.exit(main())
