"""Built-in fusion strategies and baselines; importing this package registers them."""
from strategies import sasrec  # noqa: F401
