"""catsdogs: the documented cat-vs-dog CNN, its training pipeline and its Hub I/O."""

__all__ = ["CatsDogsCNN"]


def __getattr__(name: str):
    # Imported on first use, so that `catsdogs.allocator` can restart a program before PyTorch loads.
    if name == "CatsDogsCNN":
        from catsdogs.model import CatsDogsCNN

        return CatsDogsCNN
    raise AttributeError(f"module 'catsdogs' has no attribute {name!r}")
