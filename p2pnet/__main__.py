import sys

from p2pnet.cli.main import main

sys.exit(main())
