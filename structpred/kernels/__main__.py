"""``python -m structpred.kernels {list | clean [--stale-only]}``: see
:mod:`structpred.kernels.cache`."""
import sys

from structpred.kernels.cache import main

sys.exit(main())
