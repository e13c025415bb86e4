"""``python -m panoptic_deploy.cli``: the same as the ``panoptic-deploy`` command."""

import sys

from panoptic_deploy.cli import main

sys.exit(main())
