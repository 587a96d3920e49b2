import sys

from sae_lens_jsae.cli import main

sys.exit(main())
