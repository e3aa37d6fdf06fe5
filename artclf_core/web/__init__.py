"""The catalogue for people: an HTTP API and the Artworks page (see :mod:`.app`)."""
