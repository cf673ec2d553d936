import sys

from gpt2cli.main import main

sys.exit(main())
