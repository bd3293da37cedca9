"""Re-export of the strategy contract, which lives in the harness: :mod:`fusionbench.strategy`.

Kept so that plugins written against ``from strategies.base import Strategy`` (the ``strategies``
package is installed with fusionbench, and entry-point plugins could import it) keep working. New code
imports ``fusionbench.strategy``; the harness never imports this module.
"""
from fusionbench.strategy import CausalStrategy, Strategy

__all__ = ["CausalStrategy", "Strategy"]
