"""Test-suite settings. Tests are dominated by small tensor operations, for which intra-op threading costs more than
it gains (and oversubscribes a shared 2-core machine), so the suite runs torch on one thread."""

import torch

torch.set_num_threads(1)
