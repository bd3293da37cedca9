"""Built-in fusion strategies and baselines; importing this package registers them."""
from strategies import sasrec  # noqa: F401
from strategies import early  # noqa: F401
from strategies import late  # noqa: F401
from strategies import trans2d  # noqa: F401
from strategies import nova  # noqa: F401
from strategies import difsr  # noqa: F401
from strategies import gru4rec  # noqa: F401
from strategies import srgnn  # noqa: F401
from strategies import mmsr  # noqa: F401
from strategies import mdsrec  # noqa: F401
from strategies import pop  # noqa: F401
from strategies import lightgcn  # noqa: F401
from strategies import mmgcn  # noqa: F401
from strategies import mgat  # noqa: F401
from strategies import bm3  # noqa: F401
