"""``lit-sr defend``: the defense report of backdoored SR models (config, run folders, detection, report)."""
