"""The PoseGen operator.

kopf imports the ``kubernetes`` client whenever it is installed (for its model types, and to log in
through it): ~18 MiB of imports the operator never uses, since it has its own client (kube/). It is
hidden here, before anything imports kopf; a process that wants both (the tests, the benchmarks)
imports ``kubernetes`` first, and then keeps it."""

import sys

sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]  # None: "cannot be imported"
