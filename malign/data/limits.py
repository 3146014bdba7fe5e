"""Limits on decoded images, in a module that imports nothing (the command line's parsers use it).

Example:
    >>> DEFAULT_MAX_IMAGE_PIXELS
    67108864
"""

#: The decoded-pixel limit (width x height, read from the file's header) that the writer,
#: the input pipeline and the SavedModel apply unless told otherwise: 2**26 = 67,108,864
#: pixels (an 8192 x 8192 image; 61-megapixel camera photos fit). Decoding that many
#: pixels takes 192 MiB as 8-bit RGB, and the crop's float copy up to four times more.
DEFAULT_MAX_IMAGE_PIXELS = 1 << 26
