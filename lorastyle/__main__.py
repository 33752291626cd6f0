"""``python -m lorastyle``: the ``lorastyle`` command."""

import sys

from .cli import main

sys.exit(main())
