"""``lit-sr data``: prepare sub-images for fast training, or verify a prepared folder (:mod:`.cli`)."""
