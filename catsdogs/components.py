"""The demo's Gradio components, hardened against bad input: every photo reaches the page's handlers as a file
(or the bytes of a `data:` URL) that the Classifier decodes under its limits, links are fetched by the
serving.LinkFetcher, and whatever cannot be used becomes a message for the person who sent it.

    PetPhoto      gr.Image that never decodes a photo itself, nor downloads a link
    PetPhotos     gr.File whose links are fetched the same way
    AnswerLabel   gr.Label whose headline can be "not a cat or a dog"
    Demo          gr.Blocks that explains an API call's wrong input and logs a refusal in one line
    photo_errors  a decoding problem as a message for the person who sent the photo
    unshowable    a photo the browser cannot show (HEIC, TIFF), decoded once for all the page does with it
    shown_copy    the JPEG copy of it that the page shows
    decoded_once  a batch's photos for the classifier, each unshowable one decoded once for its answer and copy
"""

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import gradio as gr
from gradio.components.label import LabelData
from gradio.exceptions import InvalidPathError
from gradio.processing_utils import save_bytes_to_cache
from gradio.route_utils import API_PREFIX
from gradio.utils import get_upload_folder, is_in_or_equal
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from catsdogs.preprocess import BAD_IMAGE_ERRORS, ImageTooLarge, check_size, upright_rgb
from catsdogs.serving import LinkError, LinkFetcher, Visit

NOT_A_PHOTO = "This file is not a photo the app can read (is it a JPEG, PNG, HEIC, WebP or GIF?)."
# What every browser shows (PIL's format names; MPO: a camera's JPEG with a second picture in it). A photo in any
# other format the app reads (HEIC, TIFF) would show as a broken image: the page shows a JPEG copy of it.
BROWSER_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "WEBP", "AVIF", "BMP"}
SHOWN_SIDE = 1280  # the longest side of that copy, in pixels


@dataclass
class UnreadablePhoto:
    """What PetPhoto hands on instead of a path when PIL cannot open the upload: the reason, for the user, and
    the file (None for a `data:` URL)."""

    reason: str
    path: str | None = None


def too_large(error: Exception) -> str:
    return f"This image is too large: {error}. Send a smaller copy of it."


# The current request's Visit (set by Demo.process_api), for the components that fetch links.
VISIT: ContextVar[Visit] = ContextVar("visit")


class FetchesLinks:
    """A file component mixin: a link (gradio_client.handle_file(url)) is fetched by the Demo's LinkFetcher
    (public addresses, size and time limits), not by Gradio's own download, which reads it whole into memory.
    `class X(FetchesLinks, gr.Image)` is drawn by gr.Image's own frontend."""

    is_template = True

    def get_block_name(self) -> str:
        """The Gradio component this one is drawn as: the class after this mixin (Gradio's default takes the
        first base class, the mixin)."""
        classes = type(self).__mro__
        return classes[classes.index(FetchesLinks) + 1].__name__.lower()

    get_block_class = get_block_name

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        if isinstance(url_or_file_path, str) and url_or_file_path.startswith(("http://", "https://")):
            try:
                path = str(await VISIT.get().fetch(url_or_file_path, self.GRADIO_CACHE))
            except LinkError as error:
                raise gr.Error(f"The linked photo cannot be used: {error}.") from None
            self.temp_files.add(path)
            return path
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class PetPhoto(FetchesLinks, gr.Image):
    """gr.Image that never decodes a photo itself: every input reaches the handler as a file (or the bytes of a
    `data:` URL), for Classifier to decode under its pixel limit; what cannot be read becomes an UnreadablePhoto.

    Without this, gr.Image decodes a `data:` URL (an API call, a live frame) in full before any check, Gradio
    downloads a link whole into memory, and a text file renamed .jpg fails inside Gradio with a bare "Error".
    """

    def preprocess(self, payload):
        if payload is not None and payload.path is None and payload.url:
            payload = payload.model_copy(update={"path": self.served_file(payload.url)})
        if payload is not None and payload.url and payload.url.startswith("data:"):
            header, _, data = payload.url.partition(",")
            try:
                if not header.endswith(";base64"):
                    raise ValueError("not base64")
                return io.BytesIO(base64.b64decode(data, validate=True))
            except ValueError:  # binascii.Error is one
                return UnreadablePhoto(NOT_A_PHOTO)
        try:
            return super().preprocess(payload)  # type="filepath": opens the file's header only
        except Image.DecompressionBombError:
            return UnreadablePhoto(too_large(f"it has more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"),
                                   payload.path)
        except (UnidentifiedImageError, OSError, ValueError):
            return UnreadablePhoto(NOT_A_PHOTO, payload.path)

    def served_file(self, url: str) -> str | None:
        """The file a link to this app's own file route names (`/gradio_api/file=PATH`), where it lies in Gradio's
        cache, as every file the page is given does: Gradio's frontend at times sends a picture the box was given
        back by its link alone. A link to a file anywhere else names nothing the box takes."""
        _, found, path = url.partition(f"{API_PREFIX}/file=")
        path = unquote(path)
        return path if found and is_in_or_equal(path, self.GRADIO_CACHE) else None


class PetPhotos(FetchesLinks, gr.File):
    """gr.File (several photos) whose links are fetched like PetPhoto's."""


class AnswerLabel(gr.Label):
    """gr.Label (drawn by its frontend) that also takes a LabelData, so its headline can be an answer that is none
    of the classes ("not a cat or a dog") above the classes' probabilities."""

    is_template = True

    def postprocess(self, value):
        return value if isinstance(value, LabelData) else super().postprocess(value)


class Demo(gr.Blocks):
    """gr.Blocks whose API calls with inputs of the wrong kind get the reason, not Gradio's bare {"error": null};
    whose links are fetched by `links` with the limits of the visitor who sent them; and whose gr.Errors (a
    person's bad photo or link) are one line in the log, not a traceback."""

    def __init__(self, links: LinkFetcher, **kwargs) -> None:
        super().__init__(**kwargs)
        self.links = links

    async def process_api(self, block_fn, inputs, state=None, request=None, **kwargs):
        block_fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
        VISIT.set(self.links.visit(client_address(request[0] if isinstance(request, list) else request)))
        try:
            return await super().process_api(block_fn, inputs, state, request, **kwargs)
        except gr.Error as error:
            print(f"refused /{block_fn.api_name}: {' '.join(str(error.message).split())}", flush=True)
            error.print_exception = False  # Gradio prints the traceback of any other error
            raise

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:  # already a message for the user (gr.Error is a ValueError too)
            raise
        except InvalidPathError:  # Gradio's message names the file's full path on this server
            raise gr.Error(bad_input(block_fn, "a file that was not uploaded to this app")) from None
        except ValidationError as error:  # the value is not what the component takes (e.g. a string for a photo)
            problems = "; ".join(f"{problem['msg']} (got {problem['input']!r:.60})" for problem in error.errors()[:3])
            raise gr.Error(bad_input(block_fn, problems)) from None
        except ValueError as error:  # too few values, a file path that was never uploaded, ...
            raise gr.Error(bad_input(block_fn, str(error).splitlines()[0].rstrip("."))) from None


def client_address(request: gr.Request | None) -> str:
    """Who sent a request, as its connection's address (Gradio's gr.Request.client)."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "unknown"


def bad_input(block_fn, problem: str) -> str:
    name = f"/{block_fn.api_name}" if block_fn.api_name else "this event"
    return (f"The input of {name} is not what it takes: {problem}. Send photos as files with "
            "gradio_client.handle_file(path_or_url) (see the page's \"Use via API\" link).")


@contextmanager
def photo_errors():
    """Decoding problems become a message for the person who sent the photo."""
    try:
        yield
    except ImageTooLarge as error:
        raise gr.Error(too_large(error)) from None
    except BAD_IMAGE_ERRORS:
        raise gr.Error(NOT_A_PHOTO + " It may be damaged or cut short.") from None


def unshowable(photo: str) -> Image.Image | None:
    """The photo decoded whole when browsers cannot show its format (HEIC, TIFF), for its answer, the copy shown
    and the heatmap to share one decode (a HEIC cannot be reduced while decoding, as a JPEG is); None when they can
    show it."""
    with photo_errors():
        image = Image.open(photo)
        if image.format in BROWSER_FORMATS:
            image.close()
            return None
        check_size(image)
        image.load()
    return image


def shown_copy(image: Image.Image, name: str) -> str:
    """A JPEG copy of an unshowable photo, upright and at most SHOWN_SIDE a side, in Gradio's cache (deleted with
    the uploads), named after the photo's file."""
    picture = upright_rgb(image, at_least=SHOWN_SIDE, keep_aspect=True)
    picture.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    jpeg = io.BytesIO()
    picture.save(jpeg, "JPEG", quality=90)
    return save_bytes_to_cache(jpeg.getvalue(), f"{Path(name).stem}.jpg", get_upload_folder())


def decoded_once(photos: list[str], shown: list[str]) -> Iterator[str | Image.Image]:
    """`photos` for the classifier, each one browsers cannot show decoded once for both its answer and the copy the
    page shows; the file the page shows of each (the photo, or its copy) is appended to `shown`, in order. A file
    that is not a usable photo goes on as it is, for the classifier to say why."""
    for photo in photos:
        try:
            decoded = unshowable(photo)
        except gr.Error:
            decoded = None
        shown.append(photo if decoded is None else shown_copy(decoded, photo))
        yield photo if decoded is None else decoded
        if decoded is not None:
            decoded.close()  # its pixels go before the next photo is decoded: one whole photo in memory at a time
