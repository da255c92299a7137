"""Making DGL unimportable in a test's child interpreter, as on a machine without DGL.

``HIDE_DGL`` is Python source to put at the top of a ``python -c`` script: a finder at the
front of ``sys.meta_path`` that refuses ``dgl`` and its submodules with ImportError.
"""

HIDE_DGL = r'''
import importlib.abc
import sys


class HideDGL(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "dgl" or name.startswith("dgl."):
            raise ImportError(f"No module named '{name}' (hidden by the test)")
        return None


sys.meta_path.insert(0, HideDGL())
'''
