"""Validating and decoding uploaded image bytes with Pillow.

Everything that lands in the bucket passes through :func:`decode_image` before it may become a
catalogue row. Its job is to say *no* early and precisely: an HTML error page saved as
``.jpg``, a download cut short, a 100,000 x 100,000 px PNG of a few hundred bytes (a
decompression bomb) or an icon of 16 px must each be turned away with a short reason code that
can be counted in a dashboard and a message a curator can act on.

Design choices, and why:

* The true format comes from the bytes, never from the file name or Content-Type: uploads are
  routinely misnamed. Pillow is only allowed to try the formats we accept (``Limits.formats``),
  which also keeps its rarer, weak-signature decoders (TGA, SPIDER, ...) from "recognising"
  random bytes; everything else is named by a small magic-number sniffer so the message can
  say "file is PDF" rather than "cannot identify image file".
* The pixel count is checked from the header, before a single pixel is decoded; Pillow's own
  ``DecompressionBombWarning``/``Error`` are turned into the same rejection.
* The picture is decoded *fully* (``load()``) with ``ImageFile.LOAD_TRUNCATED_IMAGES`` left
  False, so a truncated upload is caught here instead of becoming a grey half-picture in the
  lake.
* JPEGs are decoded with ``draft()``: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, which
  is several times faster for camera-sized uploads. Nothing downstream needs more than 160 px
  (model input) or 32 px (pHash), and the draft keeps at least
  :data:`~artclf_core.images.model_input.DRAFT_SIZE` (160 px) on each side.
"""

from __future__ import annotations

import io
import json
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageFile, UnidentifiedImageError

from artclf_core.images.model_input import DRAFT_SIZE, normalize_mode

__all__ = [
    "DEFAULT_LIMITS",
    "DRAFT_SIZE",
    "REASONS",
    "DecodedImage",
    "ImageRejected",
    "Limits",
    "decode_image",
]

#: Every reason code :class:`ImageRejected` can carry, with what it means. Kept as data so a
#: dashboard or a test can enumerate them.
REASONS: dict[str, str] = {
    "empty": "zero bytes",
    "too_large_file": "more bytes than Limits.max_bytes",
    "not_an_image": "HTML, XML, JSON, plain text, an archive or bytes of no known image format",
    "unsupported_format": "a real image/document format we do not accept (ICO, PDF, SVG, ...)",
    "too_many_pixels": "header announces more than Limits.max_pixels (decompression bomb)",
    "too_small": "a side is shorter than Limits.min_side, too small to classify",
    "truncated": "the data ends before the picture is complete",
    "corrupt": "the header names an accepted format but the data cannot be decoded",
    "unsupported_mode": "decoded, but its pixel mode cannot be converted to RGB",
    "trailing_data": "more than Limits.max_trailing_bytes follow the end of a JPEG, PNG or "
    "WEBP image (e.g. an appended ZIP)",
}

_DEFAULT_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "MPO"})


@dataclass(frozen=True)
class Limits:
    """What an upload may be. Frozen so it can be shared and used as a cache key."""

    #: Bytes; refused before any parsing. 50 MiB is far above any scan we catalogue.
    max_bytes: int = 50 * 1024 * 1024
    #: Width x height from the header; 50 Mpx (e.g. 8660 x 5773) is a large museum scan, and
    #: decoding it as RGB already takes 150 MB of memory.
    max_pixels: int = 50_000_000
    #: Shortest side; below 32 px there is nothing to classify and pHash is meaningless.
    min_side: int = 32
    #: Bytes allowed after the image's own end (JPEG EOI, PNG IEND, WEBP RIFF size). Some
    #: tools pad a few bytes; more is another file riding along (a ZIP, a video of a
    #: "motion photo"), which the lake would otherwise store and serve unseen.
    max_trailing_bytes: int = 1024
    #: Pillow format names accepted. ``MPO`` is the multi-picture JPEG of many cameras.
    formats: frozenset[str] = field(default=_DEFAULT_FORMATS)


DEFAULT_LIMITS = Limits()


class ImageRejected(Exception):
    """Why an upload cannot become a catalogue image.

    ``reason`` is a short snake_case code (see :data:`REASONS`) for metrics and the database;
    ``message`` is for humans and names the actual problem ("file is HTML, not an image").
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"ImageRejected({self.reason!r}, {self.message!r})"


@dataclass
class DecodedImage:
    """A validated upload.

    ``image`` is upright 8-bit RGB (EXIF orientation applied, first frame only) and may be
    smaller than the original when libjpeg's draft mode scaled it while decoding;
    ``width``/``height`` are always the original's, after EXIF rotation, for the catalogue.
    """

    image: Image.Image
    width: int
    height: int
    format: str
    mode: str
    byte_size: int
    frames: int


# ---------------------------------------------------------------------------------------------
# Sniffing what a file is when Pillow (restricted to the accepted formats) does not know it.

#: (offset, magic bytes, format name, human description). Checked in order.
_MAGIC: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG", "PNG"),
    (0, b"GIF87a", "GIF", "GIF"),
    (0, b"GIF89a", "GIF", "GIF"),
    (0, b"II*\x00", "TIFF", "TIFF"),
    (0, b"MM\x00*", "TIFF", "TIFF"),
    (0, b"II+\x00", "TIFF", "BigTIFF"),
    (0, b"MM\x00+", "TIFF", "BigTIFF"),
    (0, b"\x00\x00\x01\x00", "ICO", "ICO (Windows icon)"),
    (0, b"\x00\x00\x02\x00", "CUR", "CUR (Windows cursor)"),
    (0, b"%PDF-", "PDF", "PDF (a document)"),
    (0, b"%!PS", "EPS", "PostScript/EPS (a vector document)"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS", "EPS (a vector document)"),
    (0, b"8BPS", "PSD", "PSD (Photoshop document)"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000", "JPEG 2000"),
    (0, b"\xffO\xffQ", "JPEG2000", "JPEG 2000 codestream"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JXL", "JPEG XL"),
    (0, b"\xff\n", "JXL", "JPEG XL"),
    (0, b"II\xbc", "JXR", "JPEG XR"),
    (0, b"qoif", "QOI", "QOI"),
    (0, b"icns", "ICNS", "ICNS (macOS icon)"),
    (0, b"DDS ", "DDS", "DDS (DirectDraw texture)"),
    (0, b"gimp xcf", "XCF", "XCF (GIMP document)"),
    (0, b"v/1\x01", "EXR", "OpenEXR"),
    (0, b"#?RADIANCE", "HDR", "Radiance HDR"),
    (0, b"BM", "BMP", "BMP"),
)
_RIFF_KINDS = {
    b"WEBP": ("WEBP", "WEBP"),
    b"AVI ": (None, "an AVI video"),
    b"WAVE": (None, "a WAV sound file"),
}
#: ISO base media ``ftyp`` brands: the HEIF family is an image format we do not accept; the
#: rest (mp4, mov, 3gp...) are videos.
_HEIF_BRANDS = {
    b"heic",
    b"heix",
    b"heim",
    b"heis",
    b"hevc",
    b"hevx",
    b"mif1",
    b"msf1",
    b"avif",
    b"avis",
}
#: Non-image binaries worth naming in a message: (magic, description).
_OTHER_BINARIES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (or Office document)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"MZ", "a Windows executable"),
    (b"OggS", "an Ogg audio/video file"),
    (b"ID3", "an MP3 audio file"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
)
_PNM = re.compile(rb"\AP[1-7][ \t\r\n#]")


def _sniff(data: bytes) -> tuple[str | None, str]:
    """Best guess at what ``data`` is: (Pillow-style image format or None, description).

    A None format means "not an image at all"; the description then says what it is instead.
    """
    for offset, magic, fmt, desc in _MAGIC:
        if data.startswith(magic, offset):
            # "BM" alone is weak: demand at least a complete BMP file header.
            if fmt == "BMP" and len(data) < 26:
                break
            return fmt, desc
    if data.startswith(b"RIFF") and len(data) >= 12 and data[8:12] in _RIFF_KINDS:
        return _RIFF_KINDS[data[8:12]]
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIF_BRANDS:
            return ("AVIF", "AVIF") if brand in (b"avif", b"avis") else ("HEIF", "HEIC/HEIF")
        return None, "an MP4/QuickTime video"
    if _PNM.match(data):
        return "PPM", "Netpbm (PBM/PGM/PPM)"
    for magic, desc in _OTHER_BINARIES:
        if data.startswith(magic):
            return None, desc
    return _sniff_text(data)


def _sniff_text(data: bytes) -> tuple[str | None, str]:
    """Name text content (the usual "image" that is really an error page or an API answer)."""
    head = data[:4096]
    if b"\x00" in head:
        return None, "binary data of no known image format"
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    if not text or text.count("\ufffd") > 8 or printable < 0.95 * len(text):
        return None, "binary data of no known image format"
    lower = text[:2048].lower()
    if "<svg" in lower or lower.startswith("<!doctype svg"):
        return "SVG", "SVG (a vector drawing in XML text)"
    if lower.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in lower:
        return None, "HTML"
    if lower.startswith("<?xml"):
        return None, "XML"
    if lower.startswith("<"):
        return None, "HTML/XML markup"
    if lower.startswith("data:image/"):
        return None, "a base64 data: URL (text)"
    if lower.startswith(("{", "[")):
        try:
            json.loads(data.decode("utf-8-sig"))
        except (ValueError, UnicodeDecodeError):
            return None, "text that looks like JSON"
        return None, "JSON"
    return None, "plain text"


def _describe_bytes(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data[:8])


def _unidentified(data: bytes, limits: Limits) -> ImageRejected:
    """Turn "Pillow could not open it" into the most useful rejection."""
    fmt, desc = _sniff(data)
    if fmt is None:
        if desc.startswith("binary data"):
            return ImageRejected(
                "not_an_image",
                f"file is not an image: its content matches no known image format "
                f"(first bytes: {_describe_bytes(data)})",
            )
        return ImageRejected("not_an_image", f"file is {desc}, not an image")
    if fmt in limits.formats or (fmt == "JPEG" and "MPO" in limits.formats):
        if _cut_short(data, fmt):
            return ImageRejected(
                "truncated", f"{desc} file is truncated: it ends inside its header"
            )
        return ImageRejected(
            "corrupt",
            f"file starts like a {desc} but its header cannot be read (damaged or cut short)",
        )
    return _unsupported(fmt, desc, limits)


def _unsupported(fmt: str, desc: str, limits: Limits) -> ImageRejected:
    accepted = ", ".join(sorted(limits.formats))
    return ImageRejected(
        "unsupported_format", f"file is {desc}, a format we do not accept (accepted: {accepted})"
    )


@lru_cache(maxsize=16)
def _pillow_formats(formats: frozenset[str]) -> tuple[str, ...]:
    """Pillow plugin ids to try for the accepted formats (MPO is opened by the JPEG plugin)."""
    Image.init()
    wanted = set(formats)
    if "MPO" in wanted:
        wanted.add("JPEG")
    return tuple(sorted(f for f in wanted if f in Image.OPEN))


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


def _bomb(exc: Exception, limits: Limits) -> ImageRejected:
    """Pillow's bomb error, in the product's terms (its own limit, not Pillow's)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.0f} Mpx" if found else "too many pixels"
    return ImageRejected(
        "too_many_pixels",
        f"image is {size}, over the {limits.max_pixels / 1e6:.1f} Mpx limit "
        "(decompression-bomb guard)",
    )


def _image_end(data: bytes, fmt: str) -> int | None:
    """Offset just past the image's own last byte, where the container says so; None when
    the format has no cheap answer (TIFF, GIF, BMP, MPO, whose extra pictures follow)."""
    if fmt == "WEBP" and len(data) >= 8:
        return struct.unpack_from("<I", data, 4)[0] + 8
    if fmt == "PNG":
        return _png_end(data)
    if fmt == "JPEG":
        return _jpeg_end(data)
    return None


def _png_end(data: bytes) -> int | None:
    """Walk the PNG chunks (length, type, data, CRC) to the end of IEND."""
    i, n = 8, len(data)
    while i + 12 <= n:
        length = struct.unpack_from(">I", data, i)[0]
        kind = data[i + 4 : i + 8]
        i += 12 + length
        if kind == b"IEND":
            return i
    return None


def _jpeg_end(data: bytes) -> int | None:
    """Walk the JPEG segments and entropy-coded scans to the end of the EOI marker; None
    when the data is damaged or ends first."""
    i = 2
    while True:
        what, i = _jpeg_segments(data, i)
        if what == "end":
            return i
        if what != "scan":
            return None
        found = _scan_end(data, i)
        if found is None:
            return None
        i = found


def _jpeg_segments(data: bytes, i: int) -> tuple[str, int]:
    """Walk JPEG marker segments from offset ``i`` to the next scan's data or the end.

    Returns ``("scan", offset after the SOS header)``, ``("end", offset after EOI)``,
    ``("cut", i)`` when the data ends inside the headers, or ``("damaged", i)`` when a
    non-marker byte or an impossible length stands where a marker must be.
    """
    n = len(data)
    while i + 2 <= n:
        if data[i] != 0xFF:
            return "damaged", i
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return "end", i + 2
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # segments without a length
            i += 2
            continue
        if i + 4 > n:
            return "cut", i
        length = struct.unpack_from(">H", data, i + 2)[0]
        if length < 2:
            return "damaged", i
        i += 2 + length
        if marker == 0xDA:
            return "scan", i
    return "cut", i


#: The ``FF`` of the first marker after entropy-coded data: an ``FF`` followed neither by a
#: stuffed ``00``, a restart marker ``D0``-``D7`` nor another ``FF`` (in a run of fill bytes
#: the last one is the marker's). One linear C-level search instead of a Python step per ``FF``
#: byte (about 1 in 256 bytes of a scan): 0.05-0.08 ms less per 60 KB JPEG.
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _scan_end(data: bytes, i: int) -> int | None:
    """Offset of the first marker after entropy-coded data starting at ``i``: stuffed
    ``FF00``, restart markers and fill bytes belong to the scan, so an ``FFD9`` inside an
    appended file is never taken for the image's end."""
    found = _MARKER_AFTER_SCAN.search(data, i)
    return found.start() if found else None


def _cut_short(data: bytes, fmt: str | None) -> bool:
    """Whether the container itself shows that the file is incomplete.

    Asked when decoding failed, to tell "the transfer stopped early" (worth fetching again)
    from "the bytes are damaged": a RIFF/BMP size field larger than the file, a PNG without its
    IEND chunk, or a JPEG whose well-formed header segments run past the end of the data.
    """
    n = len(data)
    if fmt == "WEBP" and n >= 8:
        return _image_end(data, fmt) > n
    if fmt == "BMP" and n >= 6:
        return struct.unpack_from("<I", data, 2)[0] > n
    if fmt == "PNG":
        return data.rfind(b"IEND") == -1
    if fmt in ("JPEG", "MPO"):
        # Only the headers: the scan's data may end early and the file still decode.
        return _jpeg_segments(data, 2)[0] == "cut"
    return False


def _load_error(exc: Exception, fmt: str, data: bytes) -> ImageRejected:
    """Classify an exception raised while decoding pixels."""
    text = str(exc)
    if isinstance(exc, EOFError) or "truncated" in text.lower() or _cut_short(data, fmt):
        return ImageRejected(
            "truncated", f"{fmt} file is truncated: the data ends before the picture is complete"
        )
    if isinstance(exc, OSError) and "decoder" in text and "not available" in text:
        return ImageRejected(
            "unsupported_format", f"{fmt} file uses an encoding we cannot decode ({text})"
        )
    return ImageRejected(
        "corrupt",
        f"{fmt} file is corrupt: its image data cannot be decoded ({type(exc).__name__}: {text})",
    )


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1..8), 1 when absent or unreadable.

    Broken EXIF is common in the wild (editors that rewrite it badly) and says nothing about
    whether the pixels are good, so it is ignored rather than rejected.
    """
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def decode_image(data: bytes, limits: Limits = DEFAULT_LIMITS) -> DecodedImage:
    """Validate ``data`` and decode it to upright 8-bit RGB, or raise :class:`ImageRejected`.

    Checks run cheapest first: byte size, format (from the bytes), header dimensions (the
    bomb guard, before decoding), then a full decode of the first frame.

    Safe to call from many threads at once (the pipeline decodes on a thread pool): it
    changes no process-wide state. Decompression bombs are caught by the explicit
    ``max_pixels`` header check (50 Mpx by default, below Pillow's own 89 Mpx warning) and by
    Pillow's ``DecompressionBombError``; Pillow's warning, if a caller raised ``max_pixels``
    above 89 Mpx, stays a warning.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone flipped Pillow's global switch; decoding would silently accept half files.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must be False for decode_image")
    size = len(data)
    if size == 0:
        raise ImageRejected("empty", "file is empty (0 bytes)")
    if size > limits.max_bytes:
        raise ImageRejected(
            "too_large_file",
            f"file is {_mb(size)} ({size} bytes), over the {_mb(limits.max_bytes)} limit",
        )

    try:
        img = Image.open(io.BytesIO(data), formats=_pillow_formats(limits.formats))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, limits) from None
    except UnidentifiedImageError:
        raise _unidentified(data, limits) from None
    except MemoryError:
        raise
    except Exception as exc:
        fmt, desc = _sniff(data)
        raise _load_error(exc, fmt or "image", data) from None

    with img:
        return _decode_opened(img, data, limits)


def _decode_opened(img: Image.Image, data: bytes, limits: Limits) -> DecodedImage:
    """Header checks then full decode of an opened image."""
    fmt = img.format or "unknown"
    if fmt not in limits.formats:
        raise _unsupported(fmt, fmt, limits)
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"image is {width}x{height} px ({width * height / 1e6:.1f} Mpx), over the "
            f"{limits.max_pixels / 1e6:.1f} Mpx limit (decompression-bomb guard)",
        )
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            "too_small",
            f"image is {width}x{height} px; both sides must be at least {limits.min_side} px "
            "to classify it",
        )
    mode = img.mode
    try:
        # For GIF/TIFF/WEBP this walks frame headers without decoding them.
        frames = int(getattr(img, "n_frames", 1))
        if fmt in ("JPEG", "MPO"):
            img.draft("RGB", DRAFT_SIZE)
        img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, limits) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise _load_error(exc, fmt, data) from None

    if fmt == "PNG" and _cut_short(data, fmt):
        # zlib may finish the pixels before the last chunk: still an incomplete upload.
        raise ImageRejected("truncated", "PNG file is truncated: its final IEND chunk is missing")
    end = _image_end(data, fmt)
    if end is not None and len(data) - end > limits.max_trailing_bytes:
        raise ImageRejected(
            "trailing_data",
            f"{len(data) - end} bytes follow the end of the {fmt} image at byte {end} "
            f"(limit {limits.max_trailing_bytes}): another file is appended; drop the image "
            "alone",
        )
    orientation = _orientation(img)
    out: Image.Image = img
    if orientation != 1:
        out = img.transpose(_TRANSPOSE[orientation])
        if orientation >= 5:
            width, height = height, width
    try:
        out = normalize_mode(out)
    except (ValueError, OSError) as exc:
        raise ImageRejected(
            "unsupported_mode",
            f"{fmt} image has pixel mode {mode!r}, which cannot be converted to RGB ({exc})",
        ) from None
    return DecodedImage(out, width, height, fmt, mode, len(data), frames)
