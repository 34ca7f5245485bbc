"""catsdogs: the documented cat-vs-dog CNN, its training pipeline and its Hub I/O."""

from catsdogs.model import CatsDogsCNN

__all__ = ["CatsDogsCNN"]
