"""``python -m p2pnet``: the ``p2pnet`` command (``python -m p2pnet node`` runs p2p-node)."""

import sys

from p2pnet.cli.main import main

sys.exit(main())
